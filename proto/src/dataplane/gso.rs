//! Grouping encapsulated packets into UDP GSO sends.
//!
//! The shell reads a batch of TUN packets into an arena of fixed-size slots, each frame at
//! the start of its slot. Consecutive frames to the same destination whose slots they fill
//! exactly lie back to back in the arena, so one GSO send can carry them with the slot size
//! as the segment size; only the last segment of a send may be shorter, as the kernel
//! requires.

use std::net::Ipv4Addr;
use std::ops::Range;

/// One UDP send: slots `slots.start..slots.end` of the arena to `dst`, the last one
/// `last_len` bytes long, the others exactly a slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GsoRun {
    pub dst: Ipv4Addr,
    pub slots: Range<usize>,
    pub last_len: usize,
}

impl GsoRun {
    /// The bytes of the arena this send carries.
    pub fn bytes(&self, stride: usize) -> Range<usize> {
        self.slots.start * stride..(self.slots.end - 1) * stride + self.last_len
    }

    /// The bytes of each datagram of the send, in order (to send them one by one when
    /// the kernel refuses segmentation offload).
    pub fn segments(&self, stride: usize) -> impl Iterator<Item = Range<usize>> + use<'_> {
        self.slots.clone().map(move |slot| {
            let len = if slot + 1 == self.slots.end {
                self.last_len
            } else {
                stride
            };
            slot * stride..slot * stride + len
        })
    }

    /// The GSO segment size, or `None` for a single datagram.
    pub fn segment_size(&self, stride: usize) -> Option<usize> {
        (self.slots.len() > 1).then_some(stride)
    }
}

/// Groups `slots` (each `Some((destination, frame length))`, or `None` for a dropped
/// packet) into sends of at most `max_segments` segments each. Every frame is in exactly
/// one run, in order; frames longer than `stride` are never joined to others.
pub fn gso_runs(
    slots: &[Option<(Ipv4Addr, usize)>],
    stride: usize,
    max_segments: usize,
) -> Vec<GsoRun> {
    let max_segments = max_segments.max(1);
    let mut runs = Vec::new();
    let mut i = 0;
    while i < slots.len() {
        let Some((dst, first_len)) = slots[i] else {
            i += 1;
            continue;
        };
        let mut end = i + 1;
        let mut last_len = first_len;
        while end < slots.len() && end - i < max_segments && last_len == stride {
            match slots[end] {
                Some((d, len)) if d == dst && len <= stride => {
                    last_len = len;
                    end += 1;
                }
                _ => break,
            }
        }
        runs.push(GsoRun {
            dst,
            slots: i..end,
            last_len,
        });
        i = end;
    }
    runs
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const A: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
    const B: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);

    #[test]
    fn segments_cover_the_send_slot_by_slot() {
        let run = GsoRun {
            dst: A,
            slots: 2..5,
            last_len: 40,
        };
        let segments: Vec<_> = run.segments(100).collect();
        assert_eq!(segments, [200..300, 300..400, 400..440]);
        assert_eq!(segments.first().unwrap().start, run.bytes(100).start);
        assert_eq!(segments.last().unwrap().end, run.bytes(100).end);
    }

    #[test]
    fn full_slots_to_one_peer_join_until_a_short_one_ends_the_run() {
        let s = 100;
        let slots = [
            Some((A, s)),
            Some((A, s)),
            Some((A, 40)),
            Some((A, s)),
            None,
            Some((B, s)),
            Some((A, s)),
        ];
        let runs = gso_runs(&slots, s, 64);
        assert_eq!(
            runs,
            vec![
                GsoRun {
                    dst: A,
                    slots: 0..3,
                    last_len: 40
                },
                GsoRun {
                    dst: A,
                    slots: 3..4,
                    last_len: s
                },
                GsoRun {
                    dst: B,
                    slots: 5..6,
                    last_len: s
                },
                GsoRun {
                    dst: A,
                    slots: 6..7,
                    last_len: s
                },
            ]
        );
        assert_eq!(runs[0].bytes(s), 0..240);
        assert_eq!(runs[0].segment_size(s), Some(100));
        assert_eq!(runs[1].segment_size(s), None);
    }

    #[test]
    fn runs_respect_the_segment_limit() {
        let slots = vec![Some((A, 10)); 7];
        let runs = gso_runs(&slots, 10, 3);
        assert_eq!(
            runs.iter().map(|r| r.slots.clone()).collect::<Vec<_>>(),
            vec![0..3, 3..6, 6..7]
        );
    }

    proptest! {
        /// Every frame goes out exactly once, in order, to its own destination; inside a
        /// run every segment but the last fills its slot; the carried bytes are exactly
        /// the frames' bytes.
        #[test]
        fn runs_cover_every_frame_once_and_only_join_contiguous_frames(
            raw in proptest::collection::vec(proptest::option::of((0u8..3, 1usize..=64)), 0..80),
            max in 1usize..10,
        ) {
            let stride = 64;
            let slots: Vec<_> = raw.iter().map(|o| o.map(|(d, l)| (Ipv4Addr::new(10, 0, 0, d), l))).collect();
            let runs = gso_runs(&slots, stride, max);
            let mut next = 0;
            for run in &runs {
                prop_assert!(run.slots.len() <= max);
                while next < run.slots.start {
                    prop_assert!(slots[next].is_none(), "frame {next} skipped");
                    next += 1;
                }
                for i in run.slots.clone() {
                    let (dst, len) = slots[i].expect("runs hold only frames");
                    prop_assert_eq!(dst, run.dst);
                    if i + 1 < run.slots.end {
                        prop_assert_eq!(len, stride);
                    } else {
                        prop_assert_eq!(len, run.last_len);
                    }
                }
                let bytes = run.bytes(stride);
                prop_assert_eq!(bytes.len(), (run.slots.len() - 1) * stride + run.last_len);
                next = run.slots.end;
            }
            prop_assert!(slots[next..].iter().all(Option::is_none));
        }
    }
}
