//! Shard files: one worker's mergeable state with a header that lets the merge step refuse
//! anything that does not belong to the run.
//!
//! Layout: the line `degeneracy-shard`, one line of JSON (format version, [`ShardHeader`],
//! payload length and SHA-256), then the payload: the state as MessagePack (exact `f64`s).

use super::merge::{decode, encode};
use crate::error::{Error, Result, ShardProblem};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::io::{BufRead, BufReader, Read, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};

const MAGIC: &str = "degeneracy-shard";

/// The version of the shard file format this build writes and reads.
pub const SHARD_FORMAT_VERSION: u32 = 1;

/// What a shard file says about its state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardHeader {
    /// What the payload is (e.g. `lib_build/statistics`); the merge step asks for one kind.
    pub kind: String,
    /// [`Fingerprint`] of everything the state depends on (configuration, model, data).
    pub fingerprint: String,
    /// Shard index, `0..count`.
    pub index: usize,
    /// Number of shards of the run.
    pub count: usize,
    /// First row (or chain) of this shard.
    pub start: usize,
    /// One past its last row (or chain).
    pub end: usize,
    /// Rows (or chains) of the whole run.
    pub total: usize,
}

impl ShardHeader {
    /// The header of shard `index` of `count` covering `range` of `total` items.
    pub fn new(
        kind: impl Into<String>,
        fingerprint: impl Into<String>,
        index: usize,
        count: usize,
        range: Range<usize>,
        total: usize,
    ) -> Self {
        ShardHeader {
            kind: kind.into(),
            fingerprint: fingerprint.into(),
            index,
            count,
            start: range.start,
            end: range.end,
            total,
        }
    }

    /// The rows (or chains) of this shard.
    pub fn range(&self) -> Range<usize> {
        self.start..self.end
    }
}

#[derive(Serialize, Deserialize)]
struct FileHeader {
    version: u32,
    header: ShardHeader,
    payload_bytes: u64,
    payload_sha256: String,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A SHA-256 over labelled pieces (each label and piece length-prefixed, so no two different
/// sequences of pieces hash alike): the identity of a run's configuration, model and data.
///
/// ```
/// use degeneracy::distributed::Fingerprint;
/// let a = Fingerprint::new("lib_build").bytes("config", b"{}").finish();
/// let b = Fingerprint::new("lib_build").bytes("config", b"{ }").finish();
/// assert_ne!(a, b);
/// assert_eq!(a.len(), 64);
/// ```
#[derive(Clone, Debug)]
pub struct Fingerprint(Sha256);

impl Fingerprint {
    /// A fingerprint for `purpose` (part of the hash).
    pub fn new(purpose: &str) -> Self {
        Fingerprint(Sha256::new()).bytes("purpose", purpose.as_bytes())
    }

    /// Adds `bytes` under `label`.
    pub fn bytes(mut self, label: &str, bytes: &[u8]) -> Self {
        for piece in [label.as_bytes(), bytes] {
            self.0.update((piece.len() as u64).to_le_bytes());
            self.0.update(piece);
        }
        self
    }

    /// Adds a file's contents (streamed, through its own SHA-256) under `label`.
    pub fn file(self, label: &str, path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = file.read(&mut buf).map_err(|e| Error::io(path, e))?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
        Ok(self.bytes(label, &h.finalize()))
    }

    /// Adds a value's canonical JSON (object keys sorted) under `label`.
    pub fn json<T: Serialize + ?Sized>(self, label: &str, value: &T) -> Result<Self> {
        let v = serde_json::to_value(value).map_err(|e| Error::invalid(label, "(unserialisable)", e.to_string()))?;
        let mut text = String::new();
        canonical_json(&v, &mut text);
        Ok(self.bytes(label, text.as_bytes()))
    }

    /// The hex digest.
    pub fn finish(self) -> String {
        hex(&self.0.finalize())
    }
}

fn canonical_json(v: &serde_json::Value, out: &mut String) {
    match v {
        serde_json::Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&serde_json::Value::String(k.clone()).to_string());
                out.push(':');
                canonical_json(&map[k], out);
            }
            out.push('}');
        }
        serde_json::Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical_json(item, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// Writes `state` with `header` to `path` (through a temporary file renamed into place, so a
/// crashed worker leaves no half-written shard under the final name).
pub fn write_shard_file<S: Serialize + ?Sized>(path: impl AsRef<Path>, header: &ShardHeader, state: &S) -> Result<()> {
    let path = path.as_ref();
    if header.count == 0 || header.index >= header.count || header.start > header.end || header.end > header.total {
        return Err(Error::invalid(
            "shard header",
            format!("{}/{} rows {}..{} of {}", header.index, header.count, header.start, header.end, header.total),
            "need index < count and start ≤ end ≤ total",
        ));
    }
    let payload = encode(state)?;
    let file_header = FileHeader {
        version: SHARD_FORMAT_VERSION,
        header: header.clone(),
        payload_bytes: payload.len() as u64,
        payload_sha256: hex(&Sha256::digest(&payload)),
    };
    let line = serde_json::to_string(&file_header).map_err(|e| Error::malformed(path, "shard", e.to_string()))?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".partial");
    let tmp = PathBuf::from(tmp);
    let write = || -> std::io::Result<()> {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
        writeln!(f, "{MAGIC}")?;
        writeln!(f, "{line}")?;
        f.write_all(&payload)?;
        f.into_inner().map_err(|e| e.into_error())?.sync_all()
    };
    write().map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

fn refuse(path: &Path, problem: ShardProblem) -> Error {
    Error::Shard { path: path.to_path_buf(), problem }
}

/// An opened shard file: its header checked against the run, positioned at the payload.
struct Opened {
    path: PathBuf,
    header: ShardHeader,
    payload_bytes: u64,
    payload_sha256: String,
    reader: BufReader<std::fs::File>,
}

fn open_shard(path: &Path, kind: &str, fingerprint: &str) -> Result<Opened> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let file_len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    let mut reader = BufReader::new(file);
    let mut read_line = |what: &str| -> Result<String> {
        let mut line = Vec::new();
        // A header line is short; a missing newline within 1 MiB means this is no shard file.
        let n = reader.by_ref().take(1 << 20).read_until(b'\n', &mut line).map_err(|e| Error::io(path, e))?;
        if line.last() != Some(&b'\n') {
            let problem = if n < (1 << 20) {
                ShardProblem::HeaderTruncated { found: file_len }
            } else {
                ShardProblem::NotAShard { reason: format!("no {what} line") }
            };
            return Err(refuse(path, problem));
        }
        line.pop();
        String::from_utf8(line)
            .map_err(|_| refuse(path, ShardProblem::NotAShard { reason: format!("the {what} line is not text") }))
    };
    let magic = read_line("first")?;
    if magic != MAGIC {
        return Err(refuse(path, ShardProblem::NotAShard { reason: format!("starts with {:?}", truncate(&magic)) }));
    }
    let line = read_line("header")?;
    let header_len = (MAGIC.len() + 1 + line.len() + 1) as u64;
    let version: serde_json::Value = serde_json::from_str(&line)
        .map_err(|e| refuse(path, ShardProblem::NotAShard { reason: format!("header: {e}") }))?;
    let found_version = version.get("version").and_then(serde_json::Value::as_u64).unwrap_or(0);
    if found_version != u64::from(SHARD_FORMAT_VERSION) {
        return Err(refuse(
            path,
            ShardProblem::Version { found: found_version as u32, supported: SHARD_FORMAT_VERSION },
        ));
    }
    let fh: FileHeader = serde_json::from_value(version)
        .map_err(|e| refuse(path, ShardProblem::NotAShard { reason: format!("header: {e}") }))?;
    let found = file_len.saturating_sub(header_len);
    if found != fh.payload_bytes {
        return Err(refuse(path, ShardProblem::Truncated { expected: fh.payload_bytes, found }));
    }
    let h = &fh.header;
    if h.kind != kind {
        return Err(refuse(path, ShardProblem::Kind { expected: kind.into(), found: h.kind.clone() }));
    }
    if h.fingerprint != fingerprint {
        return Err(refuse(
            path,
            ShardProblem::Fingerprint { expected: fingerprint.into(), found: h.fingerprint.clone() },
        ));
    }
    if h.index >= h.count {
        return Err(refuse(path, ShardProblem::Index { index: h.index, count: h.count }));
    }
    if h.start > h.end || h.end > h.total {
        return Err(refuse(
            path,
            ShardProblem::Range { start: h.start, end: h.end, total: h.total, expected_start: h.start },
        ));
    }
    Ok(Opened {
        path: path.to_path_buf(),
        header: fh.header,
        payload_bytes: fh.payload_bytes,
        payload_sha256: fh.payload_sha256,
        reader,
    })
}

fn truncate(s: &str) -> String {
    s.chars().take(40).collect()
}

impl Opened {
    fn payload<S: DeserializeOwned>(mut self) -> Result<S> {
        let mut bytes = Vec::with_capacity(self.payload_bytes as usize);
        self.reader.read_to_end(&mut bytes).map_err(|e| Error::io(&self.path, e))?;
        if bytes.len() as u64 != self.payload_bytes {
            let found = bytes.len() as u64;
            return Err(refuse(&self.path, ShardProblem::Truncated { expected: self.payload_bytes, found }));
        }
        if hex(&Sha256::digest(&bytes)) != self.payload_sha256 {
            return Err(refuse(&self.path, ShardProblem::Checksum));
        }
        decode(&bytes).map_err(|e| refuse(&self.path, ShardProblem::Payload { reason: e.to_string() }))
    }
}

/// Reads one shard file, checking its format, length, checksum, `kind` and `fingerprint`.
pub fn read_shard_file<S: DeserializeOwned>(
    path: impl AsRef<Path>,
    kind: &str,
    fingerprint: &str,
) -> Result<(ShardHeader, S)> {
    let opened = open_shard(path.as_ref(), kind, fingerprint)?;
    let header = opened.header.clone();
    Ok((header, opened.payload()?))
}

/// Combines the shard files `paths` (any order) of one run into the total state, merging in
/// shard order with `merge` — the same merges a single process and the MPI path use.
///
/// Before anything is decoded, every header is checked: the file must be a complete shard file
/// of this `kind` and `fingerprint`; all files must be shards of the same split (count and
/// total), each shard index exactly once, and their ranges must follow each other from 0 to the
/// total. Any violation is an [`Error::Shard`] naming the file (or [`Error::ShardsMissing`]
/// naming the missing indices); nothing is combined silently. Returns the total and the
/// headers in shard order.
pub fn merge_shard_files<S: DeserializeOwned>(
    paths: &[PathBuf],
    kind: &str,
    fingerprint: &str,
    mut merge: impl FnMut(&mut S, S) -> Result<()>,
) -> Result<(S, Vec<ShardHeader>)> {
    if paths.is_empty() {
        return Err(Error::Empty { what: "merge: no shard files given".into() });
    }
    let opened: Vec<Opened> = paths.iter().map(|p| open_shard(p, kind, fingerprint)).collect::<Result<_>>()?;
    let (count, total) = (opened[0].header.count, opened[0].header.total);
    let mut slots: Vec<Option<usize>> = vec![None; count];
    for (i, o) in opened.iter().enumerate() {
        let h = &o.header;
        if h.count != count {
            return Err(refuse(&o.path, ShardProblem::Count { expected: count, found: h.count }));
        }
        if h.total != total {
            return Err(refuse(&o.path, ShardProblem::Total { expected: total, found: h.total }));
        }
        if let Some(first) = slots[h.index] {
            let other = opened[first].path.clone();
            return Err(refuse(&o.path, ShardProblem::Duplicate { index: h.index, count, other }));
        }
        slots[h.index] = Some(i);
    }
    let missing: Vec<usize> = (0..count).filter(|&k| slots[k].is_none()).collect();
    if !missing.is_empty() {
        return Err(Error::ShardsMissing { count, missing });
    }
    let order: Vec<usize> = slots.into_iter().map(|s| s.expect("none missing")).collect();
    let mut next = 0;
    for &i in &order {
        let h = &opened[i].header;
        if h.start != next {
            let problem = ShardProblem::Range { start: h.start, end: h.end, total, expected_start: next };
            return Err(refuse(&opened[i].path, problem));
        }
        next = h.end;
    }
    if next != total {
        return Err(refuse(&opened[order[count - 1]].path, ShardProblem::End { end: next, total }));
    }
    let headers: Vec<ShardHeader> = order.iter().map(|&i| opened[i].header.clone()).collect();
    let mut by_index: Vec<Option<Opened>> = opened.into_iter().map(Some).collect();
    let mut acc: Option<S> = None;
    for i in order {
        let o = by_index[i].take().expect("each file once");
        let path = o.path.clone();
        let state: S = o.payload()?;
        match &mut acc {
            None => acc = Some(state),
            Some(a) => merge(a, state).map_err(|e| {
                refuse(
                    &path,
                    ShardProblem::Payload { reason: format!("does not merge with the shards before it: {e}") },
                )
            })?,
        }
    }
    Ok((acc.expect("at least one shard"), headers))
}
