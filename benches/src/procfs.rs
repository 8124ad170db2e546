//! CPU time and memory of processes and threads, read from `/proc` (Linux only).

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};

/// Clock ticks per second of `/proc/*/stat` times.
pub fn ticks_per_second() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 { hz as u64 } else { 100 }
}

/// utime + stime from a `stat` file (process or task), as a duration.
fn stat_cpu(path: &Path) -> Result<Duration> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    // The command name (field 2) may contain spaces; the fields after it start past ')'.
    let rest = text
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| anyhow!("malformed {}", path.display()))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime is field 14, stime field 15.
    let utime: u64 = fields.get(11).context("no utime")?.parse()?;
    let stime: u64 = fields.get(12).context("no stime")?.parse()?;
    let ticks = utime + stime;
    let hz = ticks_per_second();
    Ok(Duration::from_nanos(ticks * 1_000_000_000 / hz))
}

/// CPU time (user + system) a process has used so far, all its threads together.
pub fn process_cpu(pid: u32) -> Result<Duration> {
    stat_cpu(Path::new(&format!("/proc/{pid}/stat")))
}

/// CPU time (user + system) one thread of this process has used so far.
pub fn thread_cpu(tid: i32) -> Result<Duration> {
    stat_cpu(Path::new(&format!("/proc/self/task/{tid}/stat")))
}

/// The calling thread's kernel id, for [`thread_cpu`].
pub fn current_tid() -> i32 {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::gettid() }
}

/// Resident memory of a process in KiB (`VmRSS`).
pub fn rss_kib(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let line = text
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .ok_or_else(|| anyhow!("no VmRSS in {path}"))?;
    line.split_whitespace()
        .nth(1)
        .ok_or_else(|| anyhow!("malformed VmRSS line {line:?}"))?
        .parse()
        .context("VmRSS value")
}

/// Busy and total jiffies of the whole machine, from the first line of `/proc/stat`.
pub fn machine_jiffies() -> Result<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let line = text.lines().next().unwrap_or_default();
    let values: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    if values.len() < 5 {
        bail!("malformed /proc/stat line {line:?}");
    }
    let total: u64 = values.iter().take(8).sum();
    // idle + iowait
    let idle = values[3] + values[4];
    Ok((total - idle, total))
}

/// Number of CPUs online (whatever this process's affinity).
pub fn cores() -> usize {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    usize::try_from(n).ok().filter(|n| *n > 0).unwrap_or(1)
}

/// Restricts one thread (`tid`, or 0 for the caller) to `cpus`.
pub fn set_thread_affinity(tid: i32, cpus: &[usize]) -> Result<()> {
    // SAFETY: cpu_set_t is a plain bit set; all-zero is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &cpu in cpus {
        // SAFETY: CPU_SET writes one bit inside `set`, bounds-checked by the macro.
        unsafe { libc::CPU_SET(cpu, &mut set) };
    }
    // SAFETY: `set` is a valid cpu_set_t of the size passed.
    let rc = unsafe { libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if rc != 0 {
        bail!(
            "sched_setaffinity({tid}, {cpus:?}): {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// Restricts every thread of a process to `cpus` (threads it starts later inherit it).
pub fn set_process_affinity(pid: u32, cpus: &[usize]) -> Result<()> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
        .with_context(|| format!("listing the threads of {pid}"))?;
    for task in tasks.flatten() {
        if let Some(tid) = task.file_name().to_str().and_then(|t| t.parse().ok()) {
            set_thread_affinity(tid, cpus)?;
        }
    }
    Ok(())
}

/// The CPU model, for reports.
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".to_owned())
}

/// The process listening on TCP `port` (IPv4 or IPv6), found through the socket's inode.
pub fn pid_listening_on(port: u16) -> Result<u32> {
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // local_address is "HEXIP:HEXPORT", st 0A is LISTEN, inode is field 10.
            let (Some(local), Some(state), Some(inode)) = (f.get(1), f.get(3), f.get(9)) else {
                continue;
            };
            let listening = *state == "0A";
            let port_matches = local
                .rsplit_once(':')
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok())
                == Some(port);
            if listening && port_matches {
                inodes.push(format!("socket:[{inode}]"));
            }
        }
    }
    if inodes.is_empty() {
        bail!("no process listens on TCP port {port}");
    }
    for entry in std::fs::read_dir("/proc")
        .context("reading /proc")?
        .flatten()
    {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if let Ok(target) = std::fs::read_link(fd.path())
                && inodes.iter().any(|i| target.as_os_str() == i.as_str())
            {
                return Ok(pid);
            }
        }
    }
    bail!("found the socket of port {port} but not its process (permissions?)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_has_cpu_and_memory() {
        let pid = std::process::id();
        let mut x = 0u64;
        for i in 0..2_000_000u64 {
            x = x.wrapping_add(i * i);
        }
        std::hint::black_box(x);
        assert!(process_cpu(pid).is_ok());
        assert!(thread_cpu(current_tid()).is_ok());
        assert!(rss_kib(pid).unwrap() > 0);
        let (busy, total) = machine_jiffies().unwrap();
        assert!(busy <= total && total > 0);
    }

    #[test]
    fn finds_the_listener_of_a_port() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        assert_eq!(pid_listening_on(port).unwrap(), std::process::id());
    }
}
