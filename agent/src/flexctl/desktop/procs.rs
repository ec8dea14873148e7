//! A process's descendants, from `/proc` (Linux): the windows of a product
//! started by a launcher script belong to the script's child.

use std::collections::HashMap;

/// At most this many descendants are returned.
const MAX: usize = 1024;

/// The parent pid in the text of `/proc/PID/stat` (the field after the state,
/// which follows the command name in parentheses; the name may hold `)`).
pub fn parent_in_stat(stat: &str) -> Option<u32> {
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// Every descendant of `pid` in `parents` (child → parent), breadth first.
pub fn descendants_in(pid: u32, parents: &HashMap<u32, u32>) -> Vec<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    for (&child, &parent) in parents {
        children.entry(parent).or_default().push(child);
    }
    let mut out = Vec::new();
    let mut next = 0;
    let mut frontier = vec![pid];
    while let Some(&p) = frontier.get(next) {
        next += 1;
        for &c in children.get(&p).map(Vec::as_slice).unwrap_or_default() {
            if c != pid && !out.contains(&c) && out.len() < MAX {
                out.push(c);
                frontier.push(c);
            }
        }
    }
    out
}

/// The running descendants of `pid`.
pub fn descendants(pid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let parents: HashMap<u32, u32> = dir
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|p| {
            let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).ok()?;
            Some((p, parent_in_stat(&stat)?))
        })
        .collect();
    descendants_in(pid, &parents)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_parent_follows_a_name_with_parentheses() {
        assert_eq!(parent_in_stat("42 (acad) S 7 42 42 0"), Some(7));
        assert_eq!(parent_in_stat("42 (a) b) (c) R 1 42"), Some(1));
        assert_eq!(parent_in_stat("garbage"), None);
    }

    #[test]
    fn descendants_are_children_and_their_children() {
        let parents = HashMap::from([(2, 1), (3, 2), (4, 2), (5, 9), (6, 3)]);
        let mut d = descendants_in(1, &parents);
        d.sort();
        assert_eq!(d, vec![2, 3, 4, 6]);
        assert!(descendants_in(5, &parents).is_empty());
        // A loop in what /proc said (pids reused while reading) ends.
        let looped = HashMap::from([(1, 2), (2, 1)]);
        assert_eq!(descendants_in(1, &looped), vec![2]);
    }

    #[test]
    fn this_process_sees_its_child() {
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let d = descendants(std::process::id());
        let _ = child.kill();
        let _ = child.wait();
        assert!(d.contains(&child.id()), "{d:?}");
    }
}
