//! Which peer a datagram is for: this worker's own (by address, or by a STUN check's
//! ufrag), or another worker's, to which it is handed over (see [`crate::handoff`]).

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Instant;

use bytes::BytesMut;

use super::{RECV_BATCHES_PER_PASS, Route, Worker};
use crate::batch;
use crate::handoff::{Handed, WorkerIndex};
use crate::stun;

impl Worker {
    /// Where a datagram goes. A STUN check names its peer by ufrag, here or in the
    /// directory, and (re)binds its address: an address that a gone peer used is claimed
    /// by the peer that uses it now. Other datagrams go by address.
    pub(super) fn route(&mut self, from: SocketAddr, tcp: bool, datagram: &[u8]) -> Option<Route> {
        let Some(ufrag) = stun::local_ufrag(datagram) else {
            return self.by_addr.get(&(from, tcp)).copied();
        };
        let route = match self.by_ufrag.get(ufrag) {
            Some(&(participant, role)) => Route::Local(participant, role),
            // ICE-TCP connections are given to their owner when they open (tcp.rs).
            None if tcp => return None,
            None => match self.directory.owner(ufrag) {
                Some(owner) if owner != self.index => Route::Foreign(owner),
                _ => return None,
            },
        };
        let previous = self.by_addr.insert((from, tcp), route);
        if let Route::Foreign(_) = route
            && previous != Some(route)
        {
            self.foreign.push((from, ufrag.to_owned()));
        }
        Some(route)
    }

    /// Forgets the addresses of other workers' peers that are gone.
    pub(super) fn sweep_foreign(&mut self) {
        let (by_addr, directory) = (&mut self.by_addr, &self.directory);
        self.foreign.retain(|(addr, ufrag)| {
            let routed = by_addr.get(&(*addr, false)).copied();
            match (routed, directory.owner(ufrag)) {
                (Some(Route::Foreign(w)), Some(owner)) if w == owner => true,
                (Some(Route::Foreign(_)), _) => {
                    by_addr.remove(&(*addr, false));
                    false
                }
                _ => false,
            }
        });
    }

    /// Handles what other workers handed over, up to a pass's worth of batches; wakes
    /// itself again if more waits.
    pub(super) fn receive_handed(&mut self) {
        for _ in 0..RECV_BATCHES_PER_PASS {
            let now = Instant::now();
            let mut n = 0;
            while n < batch::BATCH {
                let Some(handed) = self.handed_in.try_take() else {
                    break;
                };
                n += 1;
                match handed {
                    Handed::Datagram { from, datagram } => {
                        self.stats.handoff.received.fetch_add(1, Ordering::Relaxed);
                        self.handle_datagram(from, false, datagram, now, true);
                    }
                    Handed::Media {
                        track,
                        layer,
                        keyframe,
                        size,
                        packet,
                    } => self.relayed(track, layer, (keyframe, size), packet, now),
                    Handed::Keyframe { track, layer } => {
                        self.request_keyframe(track, layer, now);
                    }
                }
            }
            if n == 0 {
                return;
            }
            self.flush();
            if n < batch::BATCH {
                return;
            }
        }
        self.handed_in.wake_again();
    }

    /// Handles one datagram; `handed`: another worker passed it on (it is never passed on
    /// again).
    pub(super) fn handle_datagram(
        &mut self,
        from: SocketAddr,
        tcp: bool,
        datagram: BytesMut,
        now: Instant,
        handed: bool,
    ) {
        if !handed {
            self.stats.datagrams_in.fetch_add(1, Ordering::Relaxed);
        }
        let key = match self.route(from, tcp, &datagram) {
            Some(Route::Local(participant, role)) => (participant, role),
            Some(Route::Foreign(owner)) if !handed => {
                let stats = &self.stats.handoff;
                let handed = Handed::Datagram { from, datagram };
                if self
                    .outboxes
                    .push(owner, handed, &stats.sent, &stats.dropped)
                {
                    self.to_wake[usize::from(owner)] = true;
                }
                return;
            }
            Some(Route::Foreign(_)) | None => {
                self.stats.unrouted.fetch_add(1, Ordering::Relaxed);
                return;
            }
        };
        let Some(peer) = self.peer_mut(key) else {
            self.by_addr.remove(&(from, tcp));
            self.stats.unrouted.fetch_add(1, Ordering::Relaxed);
            return;
        };
        peer.handle_datagram(from, tcp, datagram, now);
        self.touched.push(key.0);
        self.drain_peer(key, now);
    }

    /// Wakes the workers that this batch handed datagrams, media or requests to.
    pub(super) fn wake_handed(&mut self) {
        for (owner, wake) in self.to_wake.iter_mut().enumerate() {
            if std::mem::take(wake) {
                self.outboxes.wake(owner as WorkerIndex);
            }
        }
    }
}
