//! Splitting a big table into ctid ranges (`--split-larger-than`): which tables, how many
//! chunks, and each chunk's `COPY`. Pure: the numbers come from the database, the
//! decisions are made here and unit-tested.
//!
//! A chunk is the rows whose ctid lies in a range of heap pages, read with a TID range
//! scan (PostgreSQL 14 and later): `WHERE ctid >= '(a,0)' AND ctid < '(b,0)'`. The last
//! chunk has no upper bound, so rows on pages added after the count are not missed (none
//! are visible to the run's snapshot anyway). Concatenated in order, the chunks are the
//! table in physical order: what a serial `COPY` prints with `synchronize_seqscans = off`.

use crate::catalog::{ResolvedTable, Select, TableSize};

/// PostgreSQL's first version with TID range scans (`server_version_num`).
pub const TID_RANGE_SCAN: i32 = 140_000;

/// Raw CSV that chunks read ahead of their turn may hold in all (the reorder window):
/// divided among the workers, it sets each chunk's buffer ([`chunk_buffer`]) and so how
/// large a chunk is ([`chunk_pages`]).
pub const WINDOW_BYTES: u64 = 16 * 1024 * 1024;

/// The largest message a COPY reader sends (two batches of 256 KiB).
const MESSAGE_BYTES: u64 = 512 * 1024;

/// A worker's share of the window, at least one MiB.
fn share(workers: usize) -> u64 {
    (WINDOW_BYTES / workers.max(1) as u64).max(1024 * 1024)
}

/// Messages a chunk read ahead of its turn may hold before its reader waits: its share of
/// the window.
pub fn chunk_buffer(workers: usize) -> usize {
    (share(workers) / MESSAGE_BYTES).max(1) as usize
}

/// A range of heap pages: `first..end` (`end` open for the last chunk).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chunk {
    /// Position in the table (0 first).
    pub index: usize,
    /// First page.
    pub first: u64,
    /// One past the last page; `None` for the last chunk.
    pub end: Option<u64>,
}

/// Why a table larger than the threshold is still read whole (for the log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Whole {
    /// Small enough.
    Small,
    /// Only one worker (`--jobs 1`).
    OneWorker,
    /// Not a plain table (a view, a partitioned table...): it has no heap of its own.
    NotATable,
    /// PostgreSQL before 14 has no TID range scan.
    OldServer,
}

impl Whole {
    /// Why, for the log.
    pub fn explain(self) -> &'static str {
        match self {
            Whole::Small => "it is small enough",
            Whole::OneWorker => "--jobs is 1, so there is no second connection to read with",
            Whole::NotATable => {
                "it is not a plain table (a view or a partitioned table has no heap of its own)"
            }
            Whole::OldServer => "PostgreSQL before 14 has no TID range scan",
        }
    }
}

/// Decide how to read `table`: whole, or in chunks for `workers` connections.
pub fn decide(
    kind: char,
    size: TableSize,
    threshold: Option<u64>,
    workers: usize,
    server_version_num: i32,
) -> Result<Vec<Chunk>, Whole> {
    match threshold {
        Some(limit) if size.bytes > limit => {}
        _ => return Err(Whole::Small),
    }
    if kind != 'r' {
        return Err(Whole::NotATable);
    }
    if workers < 2 {
        return Err(Whole::OneWorker);
    }
    if server_version_num < TID_RANGE_SCAN {
        return Err(Whole::OldServer);
    }
    Ok(plan(
        size.pages,
        chunk_pages(workers, size.block_size, size.pages),
    ))
}

/// How a table is shared between the `shards` pods of a day: one page range per index,
/// of equal pages, the last one open-ended; or why it is read whole (by one pod), on the
/// same conditions as [`decide`].
pub fn pieces(
    kind: char,
    size: TableSize,
    threshold: Option<u64>,
    shards: u64,
    server_version_num: i32,
) -> Result<Vec<Chunk>, Whole> {
    decide(kind, size, threshold, shards as usize, server_version_num)?;
    let per = size.pages.div_ceil(shards.max(1)).max(1);
    Ok((0..shards)
        .map(|i| Chunk {
            index: i as usize,
            first: i * per,
            end: (i + 1 < shards).then(|| (i + 1) * per),
        })
        .collect())
}

/// Pages per chunk: half a worker's share of the window (a chunk's CSV then usually fits
/// its buffer, so workers read whole chunks ahead in parallel while the assembler forwards
/// the current one), and small enough that each worker gets four chunks. A chunk whose CSV
/// outgrows its buffer only makes its reader wait: memory is bounded by the window,
/// whatever the table's size and `--jobs`.
pub fn chunk_pages(workers: usize, block_size: u64, pages: u64) -> u64 {
    let half_share = share(workers) / 2 / block_size.max(1);
    let balanced = pages.div_ceil(4 * workers.max(1) as u64);
    half_share.min(balanced).max(1)
}

/// Cut `pages` into chunks of `per_chunk` pages, the last one open-ended.
pub fn plan(pages: u64, per_chunk: u64) -> Vec<Chunk> {
    let per_chunk = per_chunk.max(1);
    let count = pages.div_ceil(per_chunk).max(1) as usize;
    (0..count)
        .map(|index| Chunk {
            index,
            first: index as u64 * per_chunk,
            end: (index + 1 < count).then(|| (index as u64 + 1) * per_chunk),
        })
        .collect()
}

/// The `COPY` of one chunk: the columns a plain `COPY table` prints (generated columns
/// are not among them), the rows of its page range, a header on the first chunk only.
pub fn chunk_sql(table: &ResolvedTable, select: &Select, chunk: &Chunk) -> String {
    let range = match chunk.end {
        Some(end) => format!(
            "ctid >= '({},0)'::tid AND ctid < '({end},0)'::tid",
            chunk.first
        ),
        None => format!("ctid >= '({},0)'::tid", chunk.first),
    };
    format!(
        "COPY (SELECT {} FROM {} WHERE {range}) TO STDOUT {}",
        select.items.join(", "),
        table.rows_of(),
        select.options(chunk.index == 0)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1024 * 1024;

    fn size(bytes: u64) -> TableSize {
        TableSize {
            bytes,
            pages: bytes / 8192,
            block_size: 8192,
        }
    }

    #[test]
    fn a_shared_table_gets_one_page_range_per_pod() {
        let big = size(100 * MIB); // 12,800 pages
        let three = pieces('r', big, Some(MIB), 3, 150_000).unwrap();
        let ranges: Vec<(u64, Option<u64>)> = three.iter().map(|c| (c.first, c.end)).collect();
        assert_eq!(ranges, [(0, Some(4267)), (4267, Some(8534)), (8534, None)]);
        let whole = [
            ('r', None, 150_000, Whole::Small),
            ('v', Some(MIB), 150_000, Whole::NotATable),
            ('r', Some(MIB), 130_000, Whole::OldServer),
        ];
        for (kind, threshold, version, why) in whole {
            assert_eq!(pieces(kind, big, threshold, 3, version), Err(why), "{kind}");
        }
    }

    #[test]
    fn only_large_plain_tables_on_new_servers_with_workers_are_split() {
        let big = size(100 * MIB);
        assert!(decide('r', big, Some(10 * MIB), 2, 150_000).is_ok());
        let whole = [
            ('r', None, 2, 150_000, Whole::Small),
            ('r', Some(200 * MIB), 2, 150_000, Whole::Small),
            ('v', Some(MIB), 2, 150_000, Whole::NotATable),
            ('p', Some(MIB), 2, 150_000, Whole::NotATable),
            ('r', Some(MIB), 1, 150_000, Whole::OneWorker),
            // PostgreSQL 13 has no TID range scan: the fallback reads the table whole.
            ('r', Some(MIB), 4, 130_011, Whole::OldServer),
        ];
        for (kind, threshold, workers, version, why) in whole {
            let decided = decide(kind, big, threshold, workers, version);
            assert_eq!(
                decided,
                Err(why),
                "{kind} {threshold:?} {workers} {version}"
            );
        }
    }

    #[test]
    fn chunks_cover_every_page_once_in_order_and_the_last_is_open() {
        let chunks = plan(10, 4);
        assert_eq!(
            chunks,
            vec![
                Chunk {
                    index: 0,
                    first: 0,
                    end: Some(4)
                },
                Chunk {
                    index: 1,
                    first: 4,
                    end: Some(8)
                },
                Chunk {
                    index: 2,
                    first: 8,
                    end: None
                },
            ]
        );
        assert_eq!(
            plan(0, 4),
            vec![Chunk {
                index: 0,
                first: 0,
                end: None
            }]
        );
        assert_eq!(plan(8, 4).len(), 2);
    }

    #[test]
    fn the_window_bounds_chunk_size_for_any_number_of_workers() {
        let huge = 1 << 30;
        assert_eq!(chunk_pages(2, 8192, huge) * 8192, 4 * MIB);
        assert_eq!(chunk_pages(16, 8192, huge) * 8192, MIB / 2);
        assert_eq!(
            chunk_pages(64, 8192, huge) * 8192,
            MIB / 2,
            "a MiB of buffer each at least"
        );
        for workers in 1..=64 {
            let buffered = chunk_buffer(workers) as u64 * MESSAGE_BYTES * workers as u64;
            assert!(
                buffered <= WINDOW_BYTES.max(workers as u64 * MIB),
                "{workers}"
            );
            assert!(chunk_pages(workers, 8192, huge) * 8192 <= share(workers) / 2);
        }
        assert_eq!(chunk_buffer(2), 16);
        assert_eq!(chunk_buffer(16), 2);
        // A smaller table still gives each worker four chunks.
        assert_eq!(chunk_pages(2, 8192, 800), 100);
        assert_eq!(plan(800, chunk_pages(2, 8192, 800)).len(), 8);
        assert_eq!(chunk_pages(3, 8192, 1), 1);
    }

    #[test]
    fn chunk_sql_quotes_names_and_puts_the_header_first_only() {
        let table = ResolvedTable::plain("s", "a\"b");
        let columns = Select::csv(&["id".to_string(), "Note".to_string()], true);
        let first = Chunk {
            index: 0,
            first: 0,
            end: Some(64),
        };
        let last = Chunk {
            index: 1,
            first: 64,
            end: None,
        };
        assert_eq!(
            chunk_sql(&table, &columns, &first),
            r#"COPY (SELECT "id", "Note" FROM ONLY "s"."a""b" WHERE ctid >= '(0,0)'::tid AND ctid < '(64,0)'::tid) TO STDOUT (FORMAT csv, HEADER)"#
        );
        assert_eq!(
            chunk_sql(&table, &columns, &last),
            r#"COPY (SELECT "id", "Note" FROM ONLY "s"."a""b" WHERE ctid >= '(64,0)'::tid) TO STDOUT (FORMAT csv)"#
        );
    }
}
