//! JSON Lines files (plain or gzip) as source partitions, for replays.
//!
//! Each file is one partition; its index is the file's position in sorted
//! path order, and a record's offset is its 0-based line number. A final
//! newline does not make an empty record; a `\r` before a newline stays in
//! the record (SPEC 2).

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use flate2::read::MultiGzDecoder;
use tidemark_dataflow::source::{PartitionReader, Poll, RawBatch};

/// Expands paths and glob patterns into the sorted list of input files.
pub fn expand_inputs(patterns: &[String]) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for p in patterns {
        if p.contains(['*', '?', '[']) {
            let mut matched = false;
            for entry in glob::glob(p).with_context(|| format!("bad glob pattern {p:?}"))? {
                let path = entry.with_context(|| format!("reading a match of {p:?}"))?;
                if path.is_file() {
                    files.push(path);
                    matched = true;
                }
            }
            if !matched {
                bail!("input pattern {p:?} matches no file");
            }
        } else {
            let path = PathBuf::from(p);
            if !path.is_file() {
                bail!("input file {p:?} does not exist (pass files or glob patterns such as 'data/*.jsonl')");
            }
            files.push(path);
        }
    }
    files.sort();
    files.dedup();
    Ok(files)
}

pub struct FileReader {
    /// The path or URL, for messages.
    name: String,
    input: Box<dyn BufRead>,
    line: Vec<u8>,
    next_offset: u64,
}

impl FileReader {
    /// Opens `path` positioned at line `offset`.
    pub fn open(path: &Path, offset: u64) -> Result<Self> {
        let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
        Self::from_read(&path.display().to_string(), Box::new(file), offset)
    }

    /// Reads the JSON Lines stream `raw` (gzip when `name` ends in `.gz`),
    /// positioned at line `offset`; `name` is its path or URL.
    pub fn from_read(name: &str, raw: Box<dyn Read>, offset: u64) -> Result<Self> {
        let raw: Box<dyn Read> = if name.ends_with(".gz") {
            Box::new(MultiGzDecoder::new(raw))
        } else {
            raw
        };
        let mut reader = FileReader {
            name: name.to_owned(),
            input: Box::new(BufReader::with_capacity(1 << 20, raw)),
            line: Vec::new(),
            next_offset: 0,
        };
        while reader.next_offset < offset {
            if !reader.read_line()? {
                bail!(
                    "{name} has {} lines but the checkpoint resumes at line {offset}: the input changed since it was committed",
                    reader.next_offset
                );
            }
        }
        Ok(reader)
    }

    /// Reads the next record into `self.line`; false at end of file.
    fn read_line(&mut self) -> Result<bool> {
        self.line.clear();
        let n = match self.input.read_until(b'\n', &mut self.line) {
            Ok(n) => n,
            // A gzip stream that ends before its end: the file was cut short
            // (a copy or upload that did not finish).
            Err(e)
                if e.kind() == std::io::ErrorKind::UnexpectedEof && self.name.ends_with(".gz") =>
            {
                bail!("reading {}: {e} (the gzip file is truncated)", self.name)
            }
            Err(e) => return Err(e).with_context(|| format!("reading {}", self.name)),
        };
        if n == 0 {
            return Ok(false);
        }
        if self.line.last() == Some(&b'\n') {
            self.line.pop();
        }
        self.next_offset += 1;
        Ok(true)
    }
}

impl PartitionReader for FileReader {
    fn poll(&mut self, max: usize, batch: &mut RawBatch) -> Result<Poll, String> {
        for _ in 0..max {
            let offset = self.next_offset;
            if !self.read_line().map_err(|e| format!("{e:#}"))? {
                return Ok(Poll::Finished);
            }
            batch.push(&self.line, offset);
        }
        Ok(Poll::Ready)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(path: &Path, offset: u64) -> Vec<(Vec<u8>, u64)> {
        let mut r = FileReader::open(path, offset).unwrap();
        let mut batch = RawBatch::default();
        while r.poll(2, &mut batch).unwrap() != Poll::Finished {}
        batch.iter().map(|(b, o)| (b.to_vec(), o)).collect()
    }

    #[test]
    fn lines_offsets_final_newline_and_cr() {
        let dir = std::env::temp_dir().join(format!("tidemark-file-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("a.jsonl");
        std::fs::write(&p, b"one\r\n\ntwo\nthree\n").unwrap();
        let got = records(&p, 0);
        let want: Vec<(Vec<u8>, u64)> = vec![
            (b"one\r".to_vec(), 0),
            (b"".to_vec(), 1),
            (b"two".to_vec(), 2),
            (b"three".to_vec(), 3),
        ];
        assert_eq!(got, want);
        assert_eq!(records(&p, 2), want[2..].to_vec());
        let q = dir.join("b.jsonl");
        std::fs::write(&q, b"x\ny").unwrap();
        assert_eq!(records(&q, 0), vec![(b"x".to_vec(), 0), (b"y".to_vec(), 1)]);

        let gz = dir.join("c.jsonl.gz");
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut enc, b"g1\ng2\n").unwrap();
        std::fs::write(&gz, enc.finish().unwrap()).unwrap();
        assert_eq!(records(&gz, 1), vec![(b"g2".to_vec(), 1)]);
        assert!(FileReader::open(&q, 5).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_truncated_gzip_file_is_an_error_naming_it_after_its_whole_lines() {
        let dir = std::env::temp_dir().join(format!("tidemark-file-cut-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let gz = dir.join("cut.jsonl.gz");
        let text: String = (0..5000).map(|i| format!("record {i}\n")).collect();
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut enc, text.as_bytes()).unwrap();
        let bytes = enc.finish().unwrap();
        std::fs::write(&gz, &bytes[..bytes.len() / 2]).unwrap();
        let mut r = FileReader::open(&gz, 0).unwrap();
        let mut batch = RawBatch::default();
        let mut good = 0;
        let err = loop {
            batch.clear();
            match r.poll(1, &mut batch) {
                Ok(Poll::Ready) => {
                    let (line, offset) = batch.iter().next().unwrap();
                    assert_eq!(line, format!("record {offset}").as_bytes());
                    good += 1;
                }
                Ok(p) => panic!("a truncated file must not end cleanly: {p:?}"),
                Err(e) => break e,
            }
        };
        assert!(good > 0 && good < 5000, "{good} whole lines");
        assert_eq!(
            err,
            format!(
                "reading {}: incomplete deflate stream (the gzip file is truncated)",
                gz.display()
            )
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
