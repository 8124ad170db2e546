//! Who is speaking in a room, decided by the server from the publishers' audio levels
//! (RFC 6464), so that every client shows the same speaker. Sans-IO: the room task feeds
//! it level reports from the media worker ([`Speakers::on_levels`]) and asks it, when
//! [`Speakers::poll_timeout`] says, for the list to send ([`Speakers::poll`]).
//!
//! Levels are loudness: 0 is silence (-127 dBov), 127 is full scale (0 dBov), that is
//! 127 minus the RFC 6464 level. The election:
//! - each participant's level is smoothed (an exponential average over
//!   [`SMOOTHING`]), so one loud packet does not make a speaker;
//! - a participant enters the list after its smoothed level stays at or above
//!   `min_level` for `min_duration`, and leaves it after it stays below for `hold`;
//! - the list is ordered loudest first, except that the first place (the speaker the
//!   clients highlight) changes only when someone in the list has been louder than the
//!   holder by `margin` for `min_duration`, or the holder left the list: a cough or a
//!   laugh of someone else does not take the floor;
//! - a changed list goes out at most once per [`ACTIVE_SPEAKERS_INTERVAL`]; a change
//!   inside that window goes out when it ends.

use std::time::{Duration, Instant};

use chorus_protocol::{ActiveSpeaker, ParticipantId};

/// The shortest time between two `activeSpeakers` messages of one room.
pub const ACTIVE_SPEAKERS_INTERVAL: Duration = Duration::from_millis(300);

/// The time constant of the level smoothing: a step in the level is 63 % through after
/// this long. Short enough to follow a new speaker within the 1 s a person expects, long
/// enough to ride over the gaps between syllables.
pub const SMOOTHING: Duration = Duration::from_millis(200);

/// The election's settings (`[audio]` in the config).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpeakerSettings {
    /// The quietest smoothed level (loudness, 0–127) that counts as speech.
    pub min_level: u8,
    /// How long a level must stay at or above `min_level` to enter the list, and how long a
    /// challenger must stay `margin` louder than the first speaker to take first place.
    pub min_duration: Duration,
    /// How long a speaker stays in the list after falling below `min_level`.
    pub hold: Duration,
    /// How much louder (in dB, which is level units) than the first speaker a challenger
    /// must be to take first place.
    pub margin: u8,
    /// The most speakers the list names.
    pub max_speakers: usize,
}

impl Default for SpeakerSettings {
    fn default() -> Self {
        Self {
            // -60 dBov: a voice at a normal distance from a laptop microphone is -20 to
            // -40 dBov; background noise after browser noise suppression is under -70.
            min_level: 67,
            min_duration: Duration::from_millis(200),
            hold: Duration::from_millis(1000),
            margin: 6,
            max_speakers: 3,
        }
    }
}

/// What is known of one participant's audio.
#[derive(Debug, Clone)]
struct Voice {
    participant: ParticipantId,
    /// Smoothed loudness, 0–127.
    level: f32,
    /// When the level was last updated.
    at: Instant,
    /// Since when the smoothed level is at or above `min_level` (None: it is below).
    loud_since: Option<Instant>,
    /// Since when it is below `min_level` (None: it is at or above).
    quiet_since: Option<Instant>,
    /// In the list.
    listed: bool,
}

/// One room's election.
#[derive(Debug)]
pub struct Speakers {
    settings: SpeakerSettings,
    voices: Vec<Voice>,
    /// The first speaker, and since when a challenger is `margin` louder than it.
    first: Option<ParticipantId>,
    challenged_since: Option<(ParticipantId, Instant)>,
    /// The list as last sent, and when.
    sent: Vec<ActiveSpeaker>,
    sent_at: Option<Instant>,
}

impl Speakers {
    pub fn new(settings: SpeakerSettings) -> Self {
        Self {
            settings,
            voices: Vec::new(),
            first: None,
            challenged_since: None,
            sent: Vec::new(),
            sent_at: None,
        }
    }

    /// Levels measured by the media worker over the last interval, one per publisher
    /// with audio: loudness 0–127. Larger values are not levels (dropped; the worker has
    /// already refused them, so this is a second line).
    pub fn on_levels(&mut self, now: Instant, levels: &[(ParticipantId, u8)]) {
        for &(participant, loudness) in levels {
            if loudness > 127 {
                continue;
            }
            let voice = match self
                .voices
                .iter_mut()
                .position(|v| v.participant == participant)
            {
                Some(i) => &mut self.voices[i],
                None => {
                    self.voices.push(Voice {
                        participant,
                        level: 0.0,
                        at: now,
                        loud_since: None,
                        quiet_since: Some(now),
                        listed: false,
                    });
                    let last = self.voices.len() - 1;
                    &mut self.voices[last]
                }
            };
            let dt = now.saturating_duration_since(voice.at).as_secs_f32();
            // at least a 50 ms step for the first report, so one report moves the level
            let dt = if dt <= 0.0 { 0.05 } else { dt };
            let alpha = 1.0 - (-dt / SMOOTHING.as_secs_f32()).exp();
            voice.level += alpha * (f32::from(loudness) - voice.level);
            voice.at = now;
        }
        self.elect(now);
    }

    /// A participant left: it is forgotten at once (and the list changes if it was in it;
    /// the loudest of the others takes first place).
    pub fn remove(&mut self, participant: ParticipantId) {
        self.voices.retain(|v| v.participant != participant);
        if self.first == Some(participant) {
            self.first = self
                .voices
                .iter()
                .filter(|v| v.listed)
                .max_by(|a, b| a.level.total_cmp(&b.level))
                .map(|v| v.participant);
        }
        self.challenged_since = None;
    }

    fn elect(&mut self, now: Instant) {
        let s = self.settings;
        for v in &mut self.voices {
            if v.level >= f32::from(s.min_level) {
                v.quiet_since = None;
                let since = *v.loud_since.get_or_insert(now);
                if now.saturating_duration_since(since) >= s.min_duration {
                    v.listed = true;
                }
            } else {
                v.loud_since = None;
                let since = *v.quiet_since.get_or_insert(now);
                if now.saturating_duration_since(since) >= s.hold {
                    v.listed = false;
                }
            }
        }
        // The first place: kept unless its holder left the list or a challenger in the
        // list has been louder by the margin for min_duration.
        let level_of = |p: ParticipantId, voices: &[Voice]| {
            voices
                .iter()
                .find(|v| v.participant == p && v.listed)
                .map(|v| v.level)
        };
        let loudest = self
            .voices
            .iter()
            .filter(|v| v.listed)
            .max_by(|a, b| a.level.total_cmp(&b.level))
            .map(|v| (v.participant, v.level));
        match (self.first.and_then(|p| level_of(p, &self.voices)), loudest) {
            (None, loudest) => {
                self.first = loudest.map(|(p, _)| p);
                self.challenged_since = None;
            }
            (Some(held), Some((challenger, level)))
                if Some(challenger) != self.first && level >= held + f32::from(s.margin) =>
            {
                match self.challenged_since {
                    Some((p, since)) if p == challenger => {
                        if now.saturating_duration_since(since) >= s.min_duration {
                            self.first = Some(challenger);
                            self.challenged_since = None;
                        }
                    }
                    _ => self.challenged_since = Some((challenger, now)),
                }
            }
            _ => self.challenged_since = None,
        }
    }

    /// The speaker the clients highlight, if anyone speaks.
    pub fn first(&self) -> Option<ParticipantId> {
        self.first
    }

    /// The list as it stands: the first speaker, then the others in the list loudest
    /// first, at most `max_speakers`.
    pub fn current(&self) -> Vec<ActiveSpeaker> {
        let entry = |v: &Voice| ActiveSpeaker {
            participant_id: v.participant,
            level: v.level.round().clamp(0.0, 127.0) as u8,
        };
        let mut list: Vec<ActiveSpeaker> = Vec::new();
        if let Some(v) = self
            .first
            .and_then(|p| self.voices.iter().find(|v| v.participant == p))
        {
            list.push(entry(v));
        }
        let mut others: Vec<&Voice> = self
            .voices
            .iter()
            .filter(|v| v.listed && Some(v.participant) != self.first)
            .collect();
        others.sort_by(|a, b| b.level.total_cmp(&a.level));
        list.extend(others.into_iter().map(entry));
        list.truncate(self.settings.max_speakers);
        list
    }

    /// Whether the list differs from what was last sent in who is in it or in what order
    /// (levels alone do not make a new message).
    fn changed(&self, list: &[ActiveSpeaker]) -> bool {
        list.len() != self.sent.len()
            || list
                .iter()
                .zip(&self.sent)
                .any(|(a, b)| a.participant_id != b.participant_id)
    }

    /// The list to send now, if it changed and the last one went out at least
    /// [`ACTIVE_SPEAKERS_INTERVAL`] ago.
    pub fn poll(&mut self, now: Instant) -> Option<Vec<ActiveSpeaker>> {
        let list = self.current();
        if !self.changed(&list) {
            return None;
        }
        if self
            .sent_at
            .is_some_and(|at| now.saturating_duration_since(at) < ACTIVE_SPEAKERS_INTERVAL)
        {
            return None;
        }
        self.sent = list.clone();
        self.sent_at = Some(now);
        Some(list)
    }

    /// When [`poll`](Self::poll) may have something that it held back for the interval.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let at = self.sent_at? + ACTIVE_SPEAKERS_INTERVAL;
        self.changed(&self.current()).then_some(at)
    }

    /// The list as last sent (what a joining participant is told).
    pub fn last_sent(&self) -> &[ActiveSpeaker] {
        &self.sent
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: ParticipantId = ParticipantId(1);
    const B: ParticipantId = ParticipantId(2);
    const C: ParticipantId = ParticipantId(3);
    const STEP: Duration = Duration::from_millis(100);

    /// Feeds `reports` (one per 100 ms) and returns, after each, the first speaker and
    /// what `poll` sent.
    fn run(
        speakers: &mut Speakers,
        t0: Instant,
        reports: &[impl AsRef<[(ParticipantId, u8)]>],
    ) -> Vec<(Option<ParticipantId>, Option<Vec<ParticipantId>>)> {
        reports
            .iter()
            .enumerate()
            .map(|(i, levels)| {
                let now = t0 + STEP * (i as u32 + 1);
                speakers.on_levels(now, levels.as_ref());
                let sent = speakers
                    .poll(now)
                    .map(|l| l.iter().map(|s| s.participant_id).collect());
                (speakers.first(), sent)
            })
            .collect()
    }

    fn talk(p: ParticipantId) -> (ParticipantId, u8) {
        (p, 100) // -27 dBov
    }

    fn quiet(p: ParticipantId) -> (ParticipantId, u8) {
        (p, 0)
    }

    #[test]
    fn silence_elects_nobody_and_sends_nothing() {
        let mut s = Speakers::new(SpeakerSettings::default());
        let t0 = Instant::now();
        let out = run(&mut s, t0, &[&[quiet(A), quiet(B)]; 20]);
        assert!(
            out.iter()
                .all(|(first, sent)| first.is_none() && sent.is_none())
        );
        // below min_level is silence too: background noise at -70 dBov
        let out = run(&mut s, t0 + STEP * 20, &[&[(A, 57)]; 20]);
        assert!(out.iter().all(|(first, _)| first.is_none()));
    }

    #[test]
    fn a_speaker_is_elected_after_the_minimum_duration_and_sent_once() {
        let mut s = Speakers::new(SpeakerSettings::default());
        let t0 = Instant::now();
        let out = run(&mut s, t0, &[&[talk(A), quiet(B)]; 10]);
        let elected_at = out
            .iter()
            .position(|(f, _)| *f == Some(A))
            .expect("elected");
        // the smoothed level needs a report or two to pass -60 dBov, then 200 ms
        assert!(
            (2..=5).contains(&elected_at),
            "elected after {elected_at} reports"
        );
        assert!(out[..elected_at].iter().all(|(f, _)| f.is_none()));
        let sent: Vec<_> = out.iter().filter_map(|(_, s)| s.clone()).collect();
        assert_eq!(sent, vec![vec![A]], "sent once, when it changed");
    }

    #[test]
    fn a_cough_does_not_take_the_floor() {
        let mut s = Speakers::new(SpeakerSettings::default());
        let t0 = Instant::now();
        run(&mut s, t0, &[&[talk(A), quiet(B)]; 10]);
        assert_eq!(s.first(), Some(A));
        // B coughs louder than A for one report, then is quiet again
        let out = run(
            &mut s,
            t0 + STEP * 10,
            &[
                &[talk(A), (B, 127)],
                &[talk(A), quiet(B)],
                &[talk(A), quiet(B)],
                &[talk(A), quiet(B)],
            ],
        );
        assert!(out.iter().all(|(f, _)| *f == Some(A)), "{out:?}");
    }

    #[test]
    fn a_louder_speaker_takes_the_floor_only_by_the_margin_and_the_duration() {
        let mut s = Speakers::new(SpeakerSettings::default());
        let t0 = Instant::now();
        run(&mut s, t0, &[&[(A, 100), quiet(B)]; 10]);
        // B talks as loud as A: both are listed, A keeps first place (hysteresis)
        let out = run(&mut s, t0 + STEP * 10, &[&[(A, 100), (B, 103)]; 10]);
        assert!(out.iter().all(|(f, _)| *f == Some(A)));
        assert_eq!(
            s.current()
                .iter()
                .map(|x| x.participant_id)
                .collect::<Vec<_>>(),
            vec![A, B]
        );
        // B gets much louder: after the smoothing and min_duration, it is first
        let out = run(&mut s, t0 + STEP * 20, &[&[(A, 90), (B, 120)]; 10]);
        let moved = out.iter().position(|(f, _)| *f == Some(B)).expect("moved");
        assert!((2..=6).contains(&moved), "moved after {moved} reports");
        assert_eq!(out.last().map(|(f, _)| *f), Some(Some(B)));
    }

    #[test]
    fn the_floor_follows_when_one_stops_and_another_starts() {
        let mut s = Speakers::new(SpeakerSettings::default());
        let t0 = Instant::now();
        run(&mut s, t0, &[&[talk(A), quiet(B), quiet(C)]; 10]);
        let out = run(
            &mut s,
            t0 + STEP * 10,
            &[&[quiet(A), talk(B), quiet(C)]; 15],
        );
        let moved = out.iter().position(|(f, _)| *f == Some(B)).expect("moved");
        // within 1 s of the switch (10 reports), message throttle included
        assert!(moved < 8, "moved after {moved} reports");
        // A stays listed for `hold` after it went quiet, then leaves
        assert_eq!(
            s.current()
                .iter()
                .map(|x| x.participant_id)
                .collect::<Vec<_>>(),
            vec![B]
        );
    }

    #[test]
    fn a_speaker_who_stops_leaves_after_the_hold() {
        let mut s = Speakers::new(SpeakerSettings::default());
        let t0 = Instant::now();
        run(&mut s, t0, &[&[talk(A)]; 10]);
        let out = run(&mut s, t0 + STEP * 10, &[&[quiet(A)]; 25]);
        let gone = out.iter().position(|(f, _)| f.is_none()).expect("left");
        // the level falls below min_level within a few reports, then 1 s of hold
        assert!((10..=16).contains(&gone), "left after {gone} reports");
        assert_eq!(out[gone].1, Some(vec![]), "an empty list is sent");
        // a pause between words (shorter than the hold) keeps the speaker
        let mut s = Speakers::new(SpeakerSettings::default());
        run(&mut s, t0, &[&[talk(A)]; 10]);
        let mut pause: Vec<&[(ParticipantId, u8)]> = vec![&[(A, 0)]; 5];
        pause.extend([&[(A, 100)][..]; 5]);
        let out = run(&mut s, t0 + STEP * 10, &pause);
        assert!(out.iter().all(|(f, _)| *f == Some(A)));
    }

    #[test]
    fn messages_are_throttled_and_the_held_change_goes_out_later() {
        let mut s = Speakers::new(SpeakerSettings {
            min_duration: Duration::ZERO,
            min_level: 20,
            margin: 0,
            ..SpeakerSettings::default()
        });
        let t0 = Instant::now();
        s.on_levels(t0, &[(A, 127)]);
        s.on_levels(t0 + Duration::from_millis(50), &[(A, 127)]);
        assert_eq!(
            s.poll(t0 + Duration::from_millis(50)).map(|l| l.len()),
            Some(1)
        );
        s.on_levels(t0 + Duration::from_millis(100), &[(A, 127), (B, 127)]);
        s.on_levels(t0 + Duration::from_millis(150), &[(A, 127), (B, 127)]);
        assert_eq!(
            s.poll(t0 + Duration::from_millis(150)),
            None,
            "inside 300 ms"
        );
        let due = s.poll_timeout().expect("a held change");
        assert_eq!(due, t0 + Duration::from_millis(350));
        assert_eq!(s.poll(due).map(|l| l.len()), Some(2));
        assert_eq!(s.poll_timeout(), None);
    }

    #[test]
    fn a_participant_who_leaves_is_dropped_from_the_list() {
        let mut s = Speakers::new(SpeakerSettings::default());
        let t0 = Instant::now();
        run(&mut s, t0, &[&[talk(A), talk(B)]; 10]);
        assert_eq!(s.current().len(), 2);
        s.remove(A);
        let list = s.current();
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].participant_id, B);
        assert_eq!(s.first(), Some(B), "the other speaker takes first place");
    }

    #[test]
    fn out_of_range_levels_are_ignored() {
        let mut s = Speakers::new(SpeakerSettings::default());
        let t0 = Instant::now();
        run(&mut s, t0, &[&[(A, 200)]; 10]);
        assert!(s.current().is_empty());
    }
}
