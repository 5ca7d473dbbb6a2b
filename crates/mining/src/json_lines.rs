//! Streaming a JSON-lines dump (plain or gzip, tens of GB) through parser threads in constant
//! memory: one reader thread cuts the stream into chunks of lines, worker threads parse them, and
//! the caller receives the parsed records in file order (so outputs are deterministic). Bounded
//! channels keep at most a few chunks in flight. A line that does not parse is counted and a few
//! are kept with their line numbers for the report; it never stops the stream.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use crate::error::{MiningError, Result};

const LINES_PER_CHUNK: usize = 4096;
/// Most bytes of lines in one chunk, so a few chunks in flight stay small whatever the lines.
const CHUNK_BYTES: usize = 32 << 20;
/// Longest line parsed (the largest Amazon metadata records are a few hundred KB). A longer one
/// is read past, counted as malformed and never held in memory, so a dump without newlines
/// cannot exhaust it.
pub const MAX_LINE_BYTES: usize = 8 << 20;
/// How many malformed lines are kept verbatim for the report (all are counted).
const MALFORMED_SAMPLES: usize = 20;

/// What a pass over a dump saw.
#[derive(Debug, Default, Clone)]
pub struct StreamStats {
    pub lines: u64,
    pub records: u64,
    pub malformed: u64,
    /// `(line number, error)` of the first few malformed lines.
    pub malformed_samples: Vec<(u64, String)>,
}

struct Chunk {
    seq: u64,
    first_line: u64,
    lines: Vec<Line>,
}

enum Line {
    Text(String),
    /// A line over [`MAX_LINE_BYTES`], with its length.
    TooLong(usize),
}

struct Parsed<T> {
    seq: u64,
    records: Vec<T>,
    malformed: Vec<(u64, String)>,
    lines: u64,
}

/// Opens `path`, transparently gunzipping when it starts with the gzip magic (multi-member
/// archives included).
pub fn open_maybe_gzip(path: &Path) -> Result<Box<dyn BufRead + Send>> {
    let mut file = File::open(path).map_err(|e| MiningError::io(path, e))?;
    let mut magic = [0u8; 2];
    let n = file
        .read(&mut magic)
        .map_err(|e| MiningError::io(path, e))?;
    let file = File::open(path).map_err(|e| MiningError::io(path, e))?;
    Ok(if n == 2 && magic == [0x1f, 0x8b] {
        Box::new(BufReader::with_capacity(
            1 << 20,
            flate2::read::MultiGzDecoder::new(BufReader::with_capacity(1 << 20, file)),
        ))
    } else {
        Box::new(BufReader::with_capacity(1 << 20, file))
    })
}

/// Parses every line of `path` with `parse` on `threads` workers and hands each record to
/// `sink` in file order. `parse` returns `Ok(None)` for a valid line that holds nothing of
/// interest and `Err` for a malformed one. Blank lines are skipped.
pub fn stream_records<T, P, S>(
    path: &Path,
    threads: usize,
    parse: P,
    mut sink: S,
) -> Result<StreamStats>
where
    T: Send,
    P: Fn(&str) -> std::result::Result<Option<T>, String> + Sync,
    S: FnMut(T),
{
    let reader = open_maybe_gzip(path)?;
    let threads = threads.max(1);
    let (chunk_tx, chunk_rx) = crossbeam_channel::bounded::<Chunk>(threads * 2);
    let (out_tx, out_rx) = crossbeam_channel::bounded::<Parsed<T>>(threads * 2);
    let mut stats = StreamStats::default();
    let read_result = std::thread::scope(|scope| {
        let reader_thread = scope.spawn(move || read_chunks(reader, chunk_tx));
        for _ in 0..threads {
            let rx = chunk_rx.clone();
            let tx = out_tx.clone();
            let parse = &parse;
            scope.spawn(move || {
                for chunk in rx {
                    let mut parsed = Parsed {
                        seq: chunk.seq,
                        records: Vec::with_capacity(chunk.lines.len()),
                        malformed: Vec::new(),
                        lines: chunk.lines.len() as u64,
                    };
                    for (i, line) in chunk.lines.iter().enumerate() {
                        let line = match line {
                            Line::Text(text) => text.trim(),
                            Line::TooLong(n) => {
                                parsed.malformed.push((
                                    chunk.first_line + i as u64,
                                    format!(
                                        "line is {n} bytes, over the {MAX_LINE_BYTES}-byte limit"
                                    ),
                                ));
                                continue;
                            }
                        };
                        if line.is_empty() {
                            continue;
                        }
                        match parse(line) {
                            Ok(Some(r)) => parsed.records.push(r),
                            Ok(None) => {}
                            Err(e) => parsed.malformed.push((chunk.first_line + i as u64, e)),
                        }
                    }
                    if tx.send(parsed).is_err() {
                        return;
                    }
                }
            });
        }
        drop(chunk_rx);
        drop(out_tx);
        // Results arrive out of order; hand them on in order.
        let mut pending = BTreeMap::new();
        let mut next = 0u64;
        for parsed in out_rx {
            pending.insert(parsed.seq, parsed);
            while let Some(p) = pending.remove(&next) {
                next += 1;
                stats.lines += p.lines;
                stats.malformed += p.malformed.len() as u64;
                for m in p.malformed {
                    if stats.malformed_samples.len() < MALFORMED_SAMPLES {
                        stats.malformed_samples.push(m);
                    }
                }
                stats.records += p.records.len() as u64;
                p.records.into_iter().for_each(&mut sink);
            }
        }
        reader_thread
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("reader thread panicked")))
    });
    read_result.map_err(|e| MiningError::io(path, e))?;
    Ok(stats)
}

/// Reads one line (through its `\n`) into `buf`, keeping at most `max` bytes of it; the rest
/// of a longer line is read and dropped. Returns the line's whole length, 0 at the end.
fn read_line_bounded(
    reader: &mut dyn BufRead,
    buf: &mut Vec<u8>,
    max: usize,
) -> std::io::Result<usize> {
    let mut length = 0;
    loop {
        let available = match reader.fill_buf() {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if available.is_empty() {
            return Ok(length);
        }
        let (used, done) = match available.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (available.len(), false),
        };
        let room = max.saturating_sub(buf.len());
        buf.extend_from_slice(&available[..used.min(room)]);
        length += used;
        reader.consume(used);
        if done {
            return Ok(length);
        }
    }
}

fn read_chunks(
    mut reader: Box<dyn BufRead + Send>,
    tx: crossbeam_channel::Sender<Chunk>,
) -> std::io::Result<()> {
    let mut seq = 0;
    let mut line_no = 1u64;
    loop {
        let mut lines = Vec::with_capacity(LINES_PER_CHUNK);
        let mut bytes = 0;
        let first_line = line_no;
        let mut at_end = false;
        while lines.len() < LINES_PER_CHUNK && bytes < CHUNK_BYTES {
            let mut buf = Vec::new();
            let length = read_line_bounded(&mut reader, &mut buf, MAX_LINE_BYTES)?;
            if length == 0 {
                at_end = true;
                break;
            }
            bytes += buf.len();
            lines.push(if length > MAX_LINE_BYTES {
                Line::TooLong(length)
            } else {
                // Invalid UTF-8 becomes replacement characters; the JSON parser then reports
                // the line.
                Line::Text(
                    String::from_utf8(buf)
                        .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()),
                )
            });
            line_no += 1;
        }
        if lines.is_empty() {
            return Ok(());
        }
        let last = at_end;
        if tx
            .send(Chunk {
                seq,
                first_line,
                lines,
            })
            .is_err()
        {
            return Ok(());
        }
        seq += 1;
        if last {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// The `n` of a `{"n": …}` line.
    fn number_field(line: &str) -> std::result::Result<Option<u64>, String> {
        let v: serde_json::Value = serde_json::from_str(line).map_err(|e| e.to_string())?;
        Ok(v["n"].as_u64())
    }

    #[test]
    fn records_come_back_in_order_with_malformed_lines_counted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.json.gz");
        let mut gz = flate2::write::GzEncoder::new(
            File::create(&path).unwrap(),
            flate2::Compression::fast(),
        );
        for i in 0..10_000u64 {
            if i % 1000 == 7 {
                writeln!(gz, "{{broken").unwrap();
            } else {
                writeln!(gz, "{{\"n\": {i}}}").unwrap();
            }
        }
        gz.finish().unwrap();
        let mut seen = Vec::new();
        let stats = stream_records(&path, 3, number_field, |n| seen.push(n)).unwrap();
        assert_eq!(stats.lines, 10_000);
        assert_eq!(stats.malformed, 10);
        assert_eq!(stats.malformed_samples[0].0, 8, "line numbers are 1-based");
        assert_eq!(seen.len(), 9_990);
        assert!(seen.windows(2).all(|w| w[0] < w[1]), "file order is kept");
    }

    #[test]
    fn an_overlong_line_is_counted_and_never_held_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.json");
        let mut f = std::io::BufWriter::new(File::create(&path).unwrap());
        writeln!(f, "{{\"n\": 1}}").unwrap();
        let long = vec![b'x'; MAX_LINE_BYTES + 10];
        f.write_all(&long).unwrap();
        writeln!(f).unwrap();
        writeln!(f, "{{\"n\": 2}}").unwrap();
        f.write_all(&long).unwrap(); // and a last one without a newline
        drop(f);
        let mut seen = Vec::new();
        let stats = stream_records(&path, 2, number_field, |n| seen.push(n)).unwrap();
        assert_eq!(seen, [1, 2]);
        assert_eq!(stats.lines, 4);
        assert_eq!(stats.malformed, 2);
        assert_eq!(stats.malformed_samples[0].0, 2);
        assert!(
            stats.malformed_samples[0].1.contains("over the"),
            "{:?}",
            stats.malformed_samples
        );
    }
}
