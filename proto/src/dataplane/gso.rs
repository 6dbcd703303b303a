//! Grouping encapsulated packets into UDP GSO sends.
//!
//! The shell lays the encapsulated frames of a batch back to back in one arena (a TUN
//! read, or the segments [`super::split`] made of a super-packet). Consecutive frames to
//! the same destination that lie back to back and have the first one's length (the last
//! may be shorter, as the kernel requires) go out as one GSO send with that length as the
//! segment size.

use std::net::Ipv4Addr;
use std::ops::Range;

/// One encapsulated frame in the arena: `arena[start..start + len]`, to `dst`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame {
    pub dst: Ipv4Addr,
    pub start: usize,
    pub len: usize,
}

/// One UDP send: frames `frames` (indexes into the frame list), the arena's `bytes`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GsoRun {
    pub dst: Ipv4Addr,
    pub frames: Range<usize>,
    pub bytes: Range<usize>,
    /// The GSO segment size, or `None` for a single datagram.
    pub segment_size: Option<usize>,
}

/// Groups `frames` (`None` for a dropped packet) into sends of at most `max_segments`
/// segments and `max_bytes` bytes each, into `runs` (cleared first). Every frame is in
/// exactly one run, in order.
pub fn gso_runs(
    frames: &[Option<Frame>],
    max_segments: usize,
    max_bytes: usize,
    runs: &mut Vec<GsoRun>,
) {
    runs.clear();
    let max_segments = max_segments.max(1);
    let mut i = 0;
    while i < frames.len() {
        let Some(first) = frames[i] else {
            i += 1;
            continue;
        };
        let mut end = i + 1;
        let mut bytes = first.start..first.start + first.len;
        let mut last_len = first.len;
        while end < frames.len() && end - i < max_segments && last_len == first.len {
            match frames[end] {
                Some(f)
                    if f.dst == first.dst
                        && f.start == bytes.end
                        && f.len <= first.len
                        && bytes.len() + f.len <= max_bytes =>
                {
                    bytes.end += f.len;
                    last_len = f.len;
                    end += 1;
                }
                _ => break,
            }
        }
        runs.push(GsoRun {
            dst: first.dst,
            segment_size: (end - i > 1).then_some(first.len),
            frames: i..end,
            bytes,
        });
        i = end;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const A: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
    const B: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);

    /// Frames back to back from 0, with the given destinations and lengths.
    fn packed(spec: &[Option<(Ipv4Addr, usize)>]) -> Vec<Option<Frame>> {
        let mut at = 0;
        spec.iter()
            .map(|s| {
                s.map(|(dst, len)| {
                    let f = Frame {
                        dst,
                        start: at,
                        len,
                    };
                    at += len;
                    f
                })
            })
            .collect()
    }

    #[test]
    fn equal_frames_to_one_peer_join_until_a_short_one_ends_the_run() {
        let frames = packed(&[
            Some((A, 100)),
            Some((A, 100)),
            Some((A, 40)),
            Some((A, 100)),
            None,
            Some((B, 100)),
            Some((A, 100)),
        ]);
        let mut runs = Vec::new();
        gso_runs(&frames, 64, 65_000, &mut runs);
        assert_eq!(
            runs,
            vec![
                GsoRun {
                    dst: A,
                    frames: 0..3,
                    bytes: 0..240,
                    segment_size: Some(100)
                },
                GsoRun {
                    dst: A,
                    frames: 3..4,
                    bytes: 240..340,
                    segment_size: None
                },
                GsoRun {
                    dst: B,
                    frames: 5..6,
                    bytes: 340..440,
                    segment_size: None
                },
                GsoRun {
                    dst: A,
                    frames: 6..7,
                    bytes: 440..540,
                    segment_size: None
                },
            ]
        );
    }

    #[test]
    fn runs_respect_the_segment_and_byte_limits_and_need_contiguity() {
        let frames = packed(&[Some((A, 10)); 7]);
        let mut runs = Vec::new();
        gso_runs(&frames, 3, 1000, &mut runs);
        let f = |runs: &[GsoRun]| runs.iter().map(|r| r.frames.clone()).collect::<Vec<_>>();
        assert_eq!(f(&runs), vec![0..3, 3..6, 6..7]);
        gso_runs(&frames, 64, 25, &mut runs);
        assert_eq!(f(&runs), vec![0..2, 2..4, 4..6, 6..7]);
        let gap = [
            Some(Frame {
                dst: A,
                start: 0,
                len: 10,
            }),
            Some(Frame {
                dst: A,
                start: 12,
                len: 10,
            }),
        ];
        gso_runs(&gap, 64, 1000, &mut runs);
        assert_eq!(f(&runs), vec![0..1, 1..2]);
    }

    proptest! {
        /// Every frame goes out exactly once, in order, to its own destination; inside a
        /// run every segment but the last has the segment size; the run's bytes are
        /// exactly its frames' bytes.
        #[test]
        fn runs_cover_every_frame_once_and_only_join_contiguous_frames(
            raw in proptest::collection::vec(proptest::option::of((0u8..3, 1usize..=64)), 0..80),
            max in 1usize..10,
            max_bytes in 64usize..400,
        ) {
            let spec: Vec<_> = raw.iter().map(|o| o.map(|(d, l)| (Ipv4Addr::new(10, 0, 0, d), l))).collect();
            let frames = packed(&spec);
            let mut runs = Vec::new();
            gso_runs(&frames, max, max_bytes, &mut runs);
            let mut next = 0;
            for run in &runs {
                prop_assert!(run.frames.len() <= max);
                prop_assert!(run.frames.len() == 1 || run.bytes.len() <= max_bytes);
                while next < run.frames.start {
                    prop_assert!(frames[next].is_none(), "frame {next} skipped");
                    next += 1;
                }
                let mut at = run.bytes.start;
                for i in run.frames.clone() {
                    let f = frames[i].expect("runs hold only frames");
                    prop_assert_eq!(f.dst, run.dst);
                    prop_assert_eq!(f.start, at);
                    at += f.len;
                    if let Some(size) = run.segment_size {
                        if i + 1 < run.frames.end { prop_assert_eq!(f.len, size) } else { prop_assert!(f.len <= size) }
                    }
                }
                prop_assert_eq!(at, run.bytes.end);
                next = run.frames.end;
            }
            prop_assert!(frames[next..].iter().all(Option::is_none));
        }
    }
}
