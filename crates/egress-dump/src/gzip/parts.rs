//! Cutting the compressed stream into parts of exact sizes: part `n` is `part_size(n)`
//! bytes, except the last, so a reader can find every part boundary from the sizes alone.

/// Accumulates bytes and hands out full parts.
pub struct PartCutter<F: Fn(u32) -> usize> {
    part_size: F,
    number: u32,
    part: Vec<u8>,
}

impl<F: Fn(u32) -> usize> PartCutter<F> {
    /// A cutter whose part `n` (1-based) is `part_size(n)` bytes.
    pub fn new(part_size: F) -> Self {
        let first = part_size(1);
        PartCutter {
            part_size,
            number: 1,
            part: Vec::with_capacity(first),
        }
    }

    /// Add `bytes`; `emit` receives each part that fills up. A full part is held back
    /// while nothing follows it, so that the last part is never empty.
    pub fn push<E>(
        &mut self,
        mut bytes: &[u8],
        mut emit: impl FnMut(Vec<u8>) -> Result<(), E>,
    ) -> Result<(), E> {
        while !bytes.is_empty() {
            let target = (self.part_size)(self.number);
            if self.part.len() == target {
                self.number += 1;
                let next = (self.part_size)(self.number);
                emit(std::mem::replace(&mut self.part, Vec::with_capacity(next)))?;
                continue;
            }
            let take = bytes.len().min(target - self.part.len());
            self.part.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
        }
        Ok(())
    }

    /// The last part (all that is left; empty only when nothing was pushed).
    pub fn finish(self) -> Vec<u8> {
        self.part
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_have_exact_sizes_and_the_last_is_never_empty() {
        for total in [0usize, 1, 99, 100, 101, 250, 300] {
            let data: Vec<u8> = (0..total).map(|i| i as u8).collect();
            let mut cutter = PartCutter::new(|n| if n == 1 { 50 } else { 100 });
            let mut parts = Vec::new();
            for chunk in data.chunks(7) {
                cutter
                    .push(chunk, |p| -> Result<(), ()> {
                        parts.push(p);
                        Ok(())
                    })
                    .unwrap();
            }
            parts.push(cutter.finish());
            assert_eq!(parts.concat(), data, "{total}");
            let (last, full) = parts.split_last().unwrap();
            assert!(
                full.iter()
                    .enumerate()
                    .all(|(i, p)| p.len() == if i == 0 { 50 } else { 100 }),
                "{total}"
            );
            assert!(!last.is_empty() || total == 0, "{total}");
        }
    }
}
