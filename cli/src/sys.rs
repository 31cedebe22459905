//! What every subcommand needs from the system, checked: printing to stdout, and memory for
//! what the user's sizes ask for.

use std::io::Write as _;

/// Writes `text` to stdout. A closed pipe (`msloss … | head`) is not an error; any other failure
/// (a full disk, a broken terminal) is, so a result that was not delivered never exits 0.
///
/// # Errors
/// The write's error, with what failed.
pub(crate) fn print_stdout(text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(anyhow::Error::new(e).context("cannot write the result to stdout"))
        }
        _ => Ok(()),
    }
}

/// Prints one JSON value and a newline to stdout (see [`print_stdout`]).
///
/// # Errors
/// As [`print_stdout`].
pub(crate) fn print_json(value: &serde_json::Value) -> anyhow::Result<()> {
    print_stdout(&format!("{value}\n"))
}

/// Bytes of `counts[i]` values of `sizes[i]` bytes each, summed, or `None` when that overflows.
pub(crate) fn bytes(parts: &[(usize, usize)]) -> Option<u128> {
    parts.iter().try_fold(0u128, |acc, &(count, size)| acc.checked_add((count as u128).checked_mul(size as u128)?))
}

/// Refuses, before anything is allocated, work that needs `need` bytes (`None`: more than can
/// be counted) when the system cannot give them: more than the memory available now (Linux's
/// `MemAvailable` plus free swap, and the cgroup's limit where one is set). Where the system does
/// not say, only the count's overflow is refused; allocations then fail with an error of their
/// own or succeed.
///
/// # Errors
/// What `what` needs and what is available.
pub(crate) fn ensure_memory(need: Option<u128>, what: &str) -> anyhow::Result<()> {
    let gib = |b: u128| b as f64 / (1u128 << 30) as f64;
    let Some(need) = need else {
        anyhow::bail!("{what} needs more bytes than can be counted; choose smaller sizes");
    };
    if let Some(avail) = available_memory() {
        anyhow::ensure!(
            need <= avail,
            "{what} needs {:.2} GiB of memory, but {:.2} GiB is available; choose smaller sizes",
            gib(need),
            gib(avail)
        );
    }
    Ok(())
}

/// The memory this process can still get, in bytes, where the system says.
fn available_memory() -> Option<u128> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let field = |name: &str| -> Option<u128> {
        let line = meminfo.lines().find(|l| l.starts_with(name))?;
        let kib: u128 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    };
    let mut avail = field("MemAvailable:")? + field("SwapFree:").unwrap_or(0);
    // cgroup v2: the container's limit less what it uses ("max" when there is none).
    let cgroup = |file: &str| std::fs::read_to_string(format!("/sys/fs/cgroup/{file}")).ok();
    if let (Some(max), Some(current)) = (cgroup("memory.max"), cgroup("memory.current"))
        && let (Ok(max), Ok(current)) = (max.trim().parse::<u128>(), current.trim().parse::<u128>())
    {
        avail = avail.min(max.saturating_sub(current));
    }
    Some(avail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_counted_without_overflow_and_refused_past_memory() {
        assert_eq!(bytes(&[(3, 4), (2, 8)]), Some(28));
        assert_eq!(bytes(&[(usize::MAX, usize::MAX), (usize::MAX, usize::MAX), (usize::MAX, usize::MAX)]), None);
        assert!(ensure_memory(None, "this").is_err());
        assert!(ensure_memory(Some(1 << 20), "a mebibyte").is_ok());
        if available_memory().is_some() {
            let err = ensure_memory(Some(1 << 80), "a yobibyte").expect_err("more than any machine has");
            assert!(err.to_string().contains("a yobibyte needs"), "{err}");
        }
    }
}
