//! Where rows come from: resolving a dataset's `path` to files, and reading each file's rows
//! as JSON objects, in chunks, so memory stays flat however large the input.
//!
//! Supported: JSON Lines (streamed), JSON (an array of records, or JSON Lines under `.json`),
//! Parquet and Arrow IPC (file and stream; read column-wise a batch at a time), CSV. A folder or
//! glob of them; a Hugging Face dataset folder (`data/*.parquet`, split files, config folders);
//! a hub id through the local Hugging Face cache.

use crate::error::{DataError, Location, Result};
use arrow_array::{Array, RecordBatch, cast::AsArray, types::*};
use arrow_schema::DataType;
use runner_recipe::plan::{DatasetPlan, FileFormat};
use serde_json::{Map, Value as Json};
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

/// One input file and how to read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputFile {
    pub path: PathBuf,
    pub format: FileFormat,
}

/// A row and where it came from.
#[derive(Debug, Clone)]
pub struct Row {
    pub at: Location,
    pub value: Map<String, Json>,
}

const EXTENSIONS: [(&str, FileFormat); 7] = [
    ("jsonl", FileFormat::Jsonl),
    ("ndjson", FileFormat::Jsonl),
    ("json", FileFormat::Json),
    ("parquet", FileFormat::Parquet),
    ("arrow", FileFormat::Arrow),
    ("feather", FileFormat::Arrow),
    ("csv", FileFormat::Csv),
];

fn format_of(path: &Path, forced: Option<FileFormat>) -> Option<FileFormat> {
    if let Some(f) = forced {
        return Some(f);
    }
    let ext = path.extension()?.to_str()?.to_ascii_lowercase();
    EXTENSIONS.iter().find(|(e, _)| *e == ext).map(|(_, f)| *f)
}

/// Resolves a dataset entry to the files to read, in a stable order.
pub fn resolve(ds: &DatasetPlan) -> Result<Vec<InputFile>> {
    let p = Path::new(&ds.path);
    let is_glob = ds.path.contains(['*', '?', '[']);
    let files: Vec<PathBuf> = if is_glob {
        glob_files(&ds.path)?
    } else if p.is_file() {
        vec![p.to_path_buf()]
    } else if p.is_dir() {
        return resolve_folder(p, ds);
    } else if looks_like_hub_id(&ds.path) {
        let (snapshot, looked) = hub_snapshot("datasets", &ds.path, ds.revision.as_deref());
        match snapshot {
            Some(dir) => return resolve_folder(&dir, ds),
            None => {
                return Err(DataError::NotFound {
                    dataset: ds.path.clone(),
                    looked: looked.join(", "),
                    hint: "`runner run` and `runner fetch RECIPE` download it (or \
                           `huggingface-cli download --repo-type dataset <id>`); set \
                           HF_HOME/HF_HUB_CACHE to where it is, or point `path` at a local \
                           file or folder."
                        .into(),
                });
            }
        }
    } else {
        return Err(DataError::NotFound {
            dataset: ds.path.clone(),
            looked: p.display().to_string(),
            hint: "No such file or folder.".into(),
        });
    };
    to_inputs(files, ds)
}

fn to_inputs(files: Vec<PathBuf>, ds: &DatasetPlan) -> Result<Vec<InputFile>> {
    let mut out = Vec::new();
    for f in files {
        match format_of(&f, ds.ds_type) {
            Some(format) => out.push(InputFile { path: f, format }),
            None => {
                return Err(DataError::Format {
                    path: f,
                    format: "a dataset file",
                    message: "unknown extension; use .jsonl, .json, .parquet, .arrow or .csv, or set `ds_type`".into(),
                });
            }
        }
    }
    if out.is_empty() {
        return Err(DataError::EmptyDataset {
            dataset: ds.path.clone(),
            looked: "no files matched".into(),
        });
    }
    Ok(out)
}

fn glob_files(pattern: &str) -> Result<Vec<PathBuf>> {
    let paths =
        glob::glob(pattern).map_err(|e| DataError::Config(format!("bad glob `{pattern}`: {e}")))?;
    let mut files: Vec<PathBuf> = paths
        .filter_map(|p| p.ok())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    Ok(files)
}

/// A folder: `data_files` when given; else the HF layout (config folder `name`, `data/`, split
/// files or split folders); else every dataset file in it.
fn resolve_folder(dir: &Path, ds: &DatasetPlan) -> Result<Vec<InputFile>> {
    if !ds.data_files.is_empty() {
        let mut files = Vec::new();
        for f in &ds.data_files {
            let full = dir.join(f);
            let s = full.to_string_lossy().to_string();
            if s.contains(['*', '?', '[']) {
                files.extend(glob_files(&s)?);
            } else if full.is_file() {
                files.push(full);
            } else {
                return Err(DataError::NotFound {
                    dataset: ds.path.clone(),
                    looked: full.display().to_string(),
                    hint: "A `data_files` entry names no file.".into(),
                });
            }
        }
        return to_inputs(files, ds);
    }
    let mut root = dir.to_path_buf();
    if let Some(name) = &ds.name {
        let sub = dir.join(name);
        if sub.is_dir() {
            root = sub;
        } else {
            return Err(DataError::NotFound {
                dataset: ds.path.clone(),
                looked: sub.display().to_string(),
                hint: format!("No folder for configuration `name: {name}`."),
            });
        }
    }
    let mut all = Vec::new();
    collect_files(&root, ds.ds_type, 3, &mut all);
    all.sort();
    if all.is_empty() {
        return Err(DataError::EmptyDataset {
            dataset: ds.path.clone(),
            looked: format!(
                "{} (no .jsonl/.json/.parquet/.arrow/.csv files)",
                root.display()
            ),
        });
    }
    let split = ds.split.as_str();
    let matching: Vec<PathBuf> = all
        .iter()
        .filter(|f| {
            let rel = f.strip_prefix(&root).unwrap_or(f);
            rel.components().any(|c| {
                let c = c.as_os_str().to_string_lossy();
                let stem = c.split('.').next().unwrap_or("");
                c == split
                    || stem == split
                    || c.starts_with(&format!("{split}-"))
                    || c.starts_with(&format!("{split}_"))
            })
        })
        .cloned()
        .collect();
    let files = if !matching.is_empty() {
        matching
    } else if split == "train" && !has_split_names(&all, &root) {
        all
    } else {
        return Err(DataError::NotFound {
            dataset: ds.path.clone(),
            looked: format!(
                "{} ({} files, none for split `{split}`)",
                root.display(),
                all.len()
            ),
            hint: "Set `split` to one the folder has, or list `data_files`.".into(),
        });
    };
    to_inputs(files, ds)
}

fn has_split_names(files: &[PathBuf], root: &Path) -> bool {
    files.iter().any(|f| {
        let rel = f
            .strip_prefix(root)
            .unwrap_or(f)
            .to_string_lossy()
            .to_string();
        ["test", "validation", "valid", "dev", "eval"]
            .iter()
            .any(|s| {
                rel.starts_with(&format!("{s}-"))
                    || rel.starts_with(&format!("{s}/"))
                    || rel.contains(&format!("/{s}-"))
            })
    })
}

fn collect_files(dir: &Path, forced: Option<FileFormat>, depth: usize, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        let name = e.file_name().to_string_lossy().to_string();
        // Metadata that `datasets` and the hub keep beside the data.
        if name.starts_with('.')
            || matches!(
                name.as_str(),
                "dataset_info.json" | "dataset_infos.json" | "dataset_dict.json" | "state.json"
            )
            || name.starts_with("cache-")
        {
            continue;
        }
        if p.is_dir() {
            if depth > 0 {
                collect_files(&p, forced, depth - 1, out);
            }
        } else if format_of(&p, forced).is_some() {
            out.push(p);
        }
    }
}

pub(crate) fn looks_like_hub_id(s: &str) -> bool {
    runner_hub::is_repo_id(s)
}

/// The snapshot folder of a repo (`kind` = `datasets` or `models`) in the local HF cache, and
/// the places looked at: `runner_hub`'s lookup, the one every stage uses (the pipeline's inputs
/// stage downloads what is missing and pins `revision` to the commit before this runs).
pub(crate) fn hub_snapshot(
    kind: &str,
    id: &str,
    revision: Option<&str>,
) -> (Option<PathBuf>, Vec<String>) {
    let kind = if kind == "datasets" {
        runner_hub::Kind::Dataset
    } else {
        runner_hub::Kind::Model
    };
    let cache = runner_hub::cache::cache_dir();
    let looked = vec![
        runner_hub::cache::repo_dir(&cache, kind, id)
            .display()
            .to_string(),
    ];
    let found = runner_hub::cache::find(&cache, kind, id, revision).map(|(_, dir)| dir);
    (found, looked)
}

/// Decides about a row that cannot be read: `Err` stops (the default), `Ok` skips it.
pub type OnBadRow<'a> = &'a mut dyn FnMut(DataError) -> Result<()>;

/// Stops at the first bad row.
pub fn fail_on_bad_row(e: DataError) -> Result<()> {
    Err(e)
}

/// The most bytes one row may have: 1 MiB, or 32 bytes per token of `sequence_len` when that is
/// more. A longer row cannot fit in `sequence_len` tokens, and tokenizing it costs about 250
/// bytes of memory per byte (issue 17: a 20 MB JSONL line took 27 s and 5.5 GB before being
/// dropped as too long).
pub fn max_row_bytes(sequence_len: usize) -> usize {
    (1 << 20).max(sequence_len.saturating_mul(32))
}

/// A row past [`max_row_bytes`], as a row error (`--skip-bad-rows` skips it).
fn too_big(at: Location, bytes: usize, max: usize) -> DataError {
    DataError::BadRow {
        at,
        message: format!(
            "the row is {bytes} bytes, more than the {max} runner reads in one row (the larger of \
             1 MiB and 32 bytes per token of sequence_len): split it, or skip such rows with \
             --skip-bad-rows"
        ),
    }
}

/// Bytes of text in a value: what tokenizing it would read (its strings and keys).
fn text_bytes(v: &Json) -> usize {
    match v {
        Json::String(s) => s.len(),
        Json::Array(a) => a.iter().map(text_bytes).sum(),
        Json::Object(m) => m.iter().map(|(k, v)| k.len() + text_bytes(v)).sum(),
        _ => 8,
    }
}

/// Reads a file's rows, handing them to `sink` in chunks of about `chunk` rows. Rows that cannot
/// be parsed (a malformed JSON line, bad UTF-8, a record that is not an object) go to `on_bad`;
/// a file that cannot be read at all is an error.
pub fn read_rows(
    file: &InputFile,
    chunk: usize,
    on_bad: OnBadRow<'_>,
    sink: &mut dyn FnMut(Vec<Row>) -> Result<()>,
) -> Result<()> {
    read_rows_bounded(file, chunk, max_row_bytes(0), on_bad, sink)
}

/// [`read_rows`] with rows of more than `max_row` bytes handed to `on_bad`: a JSON Lines or
/// CSV row is measured before it is parsed, other formats by the text a row holds.
pub fn read_rows_bounded(
    file: &InputFile,
    chunk: usize,
    max_row: usize,
    on_bad: OnBadRow<'_>,
    sink: &mut dyn FnMut(Vec<Row>) -> Result<()>,
) -> Result<()> {
    let on_bad = std::cell::RefCell::new(on_bad);
    let mut bounded = |rows: Vec<Row>| -> Result<()> {
        let mut ok = Vec::with_capacity(rows.len());
        for r in rows {
            let bytes: usize = r.value.iter().map(|(k, v)| k.len() + text_bytes(v)).sum();
            if bytes > max_row {
                (*on_bad.borrow_mut())(too_big(r.at, bytes, max_row))?;
            } else {
                ok.push(r);
            }
        }
        if ok.is_empty() { Ok(()) } else { sink(ok) }
    };
    let mut on_bad_row = |e: DataError| (*on_bad.borrow_mut())(e);
    match file.format {
        FileFormat::Jsonl => read_jsonl(&file.path, chunk, max_row, &mut on_bad_row, &mut bounded),
        FileFormat::Json => read_json(&file.path, chunk, max_row, &mut on_bad_row, &mut bounded),
        FileFormat::Parquet => read_parquet(&file.path, chunk, &mut bounded),
        FileFormat::Arrow => read_arrow(&file.path, chunk, &mut bounded),
        FileFormat::Csv => read_csv(&file.path, chunk, max_row, &mut on_bad_row, &mut bounded),
    }
}

fn at_line(path: &Path, line: u64) -> Location {
    Location {
        file: path.to_path_buf(),
        row: Some(line),
        field: None,
    }
}

fn read_jsonl(
    path: &Path,
    chunk: usize,
    max_row: usize,
    on_bad: OnBadRow<'_>,
    sink: &mut dyn FnMut(Vec<Row>) -> Result<()>,
) -> Result<()> {
    let f = std::fs::File::open(path).map_err(|e| DataError::io(path, e))?;
    read_jsonl_from(
        path,
        BufReader::with_capacity(1 << 20, f),
        chunk,
        max_row,
        on_bad,
        sink,
    )
}

/// Reads one line into `buf` (cleared first), keeping at most `max` bytes of it; the rest of a
/// longer line is read past without being kept. Returns the line's full length (0 at the end).
fn read_line_bounded(
    r: &mut impl BufRead,
    buf: &mut Vec<u8>,
    max: usize,
) -> std::io::Result<usize> {
    buf.clear();
    let n = r.by_ref().take(max as u64 + 1).read_until(b'\n', buf)?;
    if n <= max || buf.last() == Some(&b'\n') {
        return Ok(n);
    }
    let mut total = n;
    loop {
        let avail = r.fill_buf()?;
        if avail.is_empty() {
            return Ok(total);
        }
        match avail.iter().position(|&b| b == b'\n') {
            Some(i) => {
                r.consume(i + 1);
                return Ok(total + i + 1);
            }
            None => {
                let l = avail.len();
                total += l;
                r.consume(l);
            }
        }
    }
}

fn read_jsonl_from(
    path: &Path,
    mut r: impl BufRead,
    chunk: usize,
    max_row: usize,
    on_bad: OnBadRow<'_>,
    sink: &mut dyn FnMut(Vec<Row>) -> Result<()>,
) -> Result<()> {
    let mut buf = Vec::new();
    let mut line = 0;
    let mut rows = Vec::with_capacity(chunk);
    loop {
        let n = read_line_bounded(&mut r, &mut buf, max_row).map_err(|e| DataError::io(path, e))?;
        if n == 0 {
            break;
        }
        line += 1;
        if buf.len() > max_row && buf.last() != Some(&b'\n') {
            on_bad(too_big(at_line(path, line), n, max_row))?;
            continue;
        }
        let text = match std::str::from_utf8(&buf) {
            Ok(t) => t.trim(),
            Err(e) => {
                on_bad(DataError::NotUtf8 {
                    at: at_line(path, line),
                    offset: e.valid_up_to(),
                })?;
                continue;
            }
        };
        if text.is_empty() {
            continue;
        }
        let value = match serde_json::from_str(text) {
            Ok(Json::Object(v)) => v,
            Ok(other) => {
                on_bad(DataError::WrongType {
                    at: at_line(path, line),
                    expected: "a JSON object per line",
                    found: crate::chat::json_kind(&other).into(),
                })?;
                continue;
            }
            Err(e) => {
                on_bad(DataError::Json {
                    at: at_line(path, line),
                    message: e.to_string(),
                })?;
                continue;
            }
        };
        rows.push(Row {
            at: at_line(path, line),
            value,
        });
        if rows.len() >= chunk {
            sink(std::mem::replace(&mut rows, Vec::with_capacity(chunk)))?;
        }
    }
    if !rows.is_empty() {
        sink(rows)?;
    }
    Ok(())
}

/// `.json`: an array of records (read whole), or JSON Lines.
fn read_json(
    path: &Path,
    chunk: usize,
    max_row: usize,
    on_bad: OnBadRow<'_>,
    sink: &mut dyn FnMut(Vec<Row>) -> Result<()>,
) -> Result<()> {
    let mut f = std::fs::File::open(path).map_err(|e| DataError::io(path, e))?;
    let mut head = [0u8; 4096];
    let n = f.read(&mut head).map_err(|e| DataError::io(path, e))?;
    let first = head[..n].iter().find(|b| !b.is_ascii_whitespace()).copied();
    if first != Some(b'[') {
        return read_jsonl(path, chunk, max_row, on_bad, sink);
    }
    let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    let text = std::str::from_utf8(&bytes).map_err(|e| DataError::NotUtf8 {
        at: Location {
            file: path.to_path_buf(),
            ..Default::default()
        },
        offset: e.valid_up_to(),
    })?;
    let value: Vec<Json> = serde_json::from_str(text).map_err(|e| DataError::Json {
        at: at_line(path, e.line() as u64),
        message: e.to_string(),
    })?;
    let mut rows = Vec::with_capacity(chunk);
    for (i, v) in value.into_iter().enumerate() {
        let at = Location {
            file: path.to_path_buf(),
            row: Some(i as u64 + 1),
            field: None,
        };
        let Json::Object(value) = v else {
            on_bad(DataError::WrongType {
                at,
                expected: "an object per array element",
                found: crate::chat::json_kind(&v).into(),
            })?;
            continue;
        };
        rows.push(Row { at, value });
        if rows.len() >= chunk {
            sink(std::mem::replace(&mut rows, Vec::with_capacity(chunk)))?;
        }
    }
    if !rows.is_empty() {
        sink(rows)?;
    }
    Ok(())
}

fn read_csv(
    path: &Path,
    chunk: usize,
    max_row: usize,
    on_bad: OnBadRow<'_>,
    sink: &mut dyn FnMut(Vec<Row>) -> Result<()>,
) -> Result<()> {
    let mut r = csv::ReaderBuilder::new()
        .has_headers(true)
        .from_path(path)
        .map_err(|e| DataError::Format {
            path: path.to_path_buf(),
            format: "CSV",
            message: e.to_string(),
        })?;
    let headers = r
        .headers()
        .map_err(|e| csv_err(path, e))?
        .iter()
        .map(str::to_string)
        .collect::<Vec<_>>();
    let mut rows = Vec::with_capacity(chunk);
    for rec in r.records() {
        let rec = match rec {
            Ok(r) => r,
            Err(e) => {
                on_bad(csv_err(path, e))?;
                continue;
            }
        };
        let line = rec.position().map(|p| p.line()).unwrap_or(0);
        if rec.as_byte_record().as_slice().len() > max_row {
            on_bad(too_big(
                at_line(path, line),
                rec.as_byte_record().as_slice().len(),
                max_row,
            ))?;
            continue;
        }
        let value: Map<String, Json> = headers
            .iter()
            .zip(rec.iter())
            .map(|(h, v)| (h.clone(), Json::String(v.to_string())))
            .collect();
        rows.push(Row {
            at: at_line(path, line),
            value,
        });
        if rows.len() >= chunk {
            sink(std::mem::replace(&mut rows, Vec::with_capacity(chunk)))?;
        }
    }
    if !rows.is_empty() {
        sink(rows)?;
    }
    Ok(())
}

fn csv_err(path: &Path, e: csv::Error) -> DataError {
    let line = e.position().map(|p| p.line());
    match e.kind() {
        csv::ErrorKind::Utf8 { err, .. } => DataError::NotUtf8 {
            at: Location {
                file: path.to_path_buf(),
                row: line,
                field: Some(format!("column {}", err.field() + 1)),
            },
            offset: err.valid_up_to(),
        },
        // A ragged row is that row's problem (skippable), not the file's (issue 17).
        csv::ErrorKind::UnequalLengths {
            expected_len, len, ..
        } => DataError::BadRow {
            at: Location {
                file: path.to_path_buf(),
                row: line,
                field: None,
            },
            message: format!(
                "the row has {len} fields, the header {expected_len}: fix the row (a field \
                 with a comma needs quotes), or skip such rows with --skip-bad-rows"
            ),
        },
        _ => DataError::Format {
            path: path.to_path_buf(),
            format: "CSV",
            message: match line {
                Some(l) => format!("line {l}: {e}"),
                None => e.to_string(),
            },
        },
    }
}

fn read_parquet(
    path: &Path,
    chunk: usize,
    sink: &mut dyn FnMut(Vec<Row>) -> Result<()>,
) -> Result<()> {
    let f = std::fs::File::open(path).map_err(|e| DataError::io(path, e))?;
    let bad = |e: &dyn std::fmt::Display| DataError::Format {
        path: path.to_path_buf(),
        format: "Parquet",
        message: e.to_string(),
    };
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(f)
        .map_err(|e| bad(&e))?
        .with_batch_size(chunk.max(1))
        .build()
        .map_err(|e| bad(&e))?;
    let mut next_row = 0u64;
    for batch in reader {
        let batch = batch.map_err(|e| bad(&e))?;
        let rows = batch_rows(path, &batch, next_row)?;
        next_row += batch.num_rows() as u64;
        sink(rows)?;
    }
    Ok(())
}

fn read_arrow(
    path: &Path,
    _chunk: usize,
    sink: &mut dyn FnMut(Vec<Row>) -> Result<()>,
) -> Result<()> {
    let bad = |e: &dyn std::fmt::Display| DataError::Format {
        path: path.to_path_buf(),
        format: "Arrow IPC",
        message: e.to_string(),
    };
    let mut f = std::fs::File::open(path).map_err(|e| DataError::io(path, e))?;
    let mut magic = [0u8; 6];
    let is_file =
        f.read(&mut magic).map_err(|e| DataError::io(path, e))? == 6 && &magic == b"ARROW1";
    let f = std::fs::File::open(path).map_err(|e| DataError::io(path, e))?;
    let mut next_row = 0u64;
    let mut each =
        |batch: std::result::Result<RecordBatch, arrow_schema::ArrowError>| -> Result<()> {
            let batch = batch.map_err(|e| bad(&e))?;
            let rows = batch_rows(path, &batch, next_row)?;
            next_row += batch.num_rows() as u64;
            sink(rows)
        };
    if is_file {
        let r = arrow_ipc::reader::FileReader::try_new(f, None).map_err(|e| bad(&e))?;
        for b in r {
            each(b)?;
        }
    } else {
        let r = arrow_ipc::reader::StreamReader::try_new(BufReader::new(f), None)
            .map_err(|e| bad(&e))?;
        for b in r {
            each(b)?;
        }
    }
    Ok(())
}

/// A record batch as JSON rows (row numbers are 1-based across the file).
pub fn batch_rows(path: &Path, batch: &RecordBatch, first_row: u64) -> Result<Vec<Row>> {
    let schema = batch.schema();
    let mut rows: Vec<Map<String, Json>> = (0..batch.num_rows()).map(|_| Map::new()).collect();
    for (field, col) in schema.fields().iter().zip(batch.columns()) {
        for (i, row) in rows.iter_mut().enumerate() {
            let v = array_value(col.as_ref(), i).map_err(|m| DataError::BadRow {
                at: Location {
                    file: path.to_path_buf(),
                    row: Some(first_row + i as u64 + 1),
                    field: Some(field.name().clone()),
                },
                message: m,
            })?;
            row.insert(field.name().clone(), v);
        }
    }
    Ok(rows
        .into_iter()
        .enumerate()
        .map(|(i, value)| Row {
            at: Location {
                file: path.to_path_buf(),
                row: Some(first_row + i as u64 + 1),
                field: None,
            },
            value,
        })
        .collect())
}

fn array_value(a: &dyn Array, i: usize) -> std::result::Result<Json, String> {
    if a.is_null(i) {
        return Ok(Json::Null);
    }
    macro_rules! num {
        ($t:ty) => {
            Json::from(a.as_primitive::<$t>().value(i))
        };
    }
    Ok(match a.data_type() {
        DataType::Null => Json::Null,
        DataType::Boolean => Json::Bool(a.as_boolean().value(i)),
        DataType::Int8 => num!(Int8Type),
        DataType::Int16 => num!(Int16Type),
        DataType::Int32 => num!(Int32Type),
        DataType::Int64 => num!(Int64Type),
        DataType::UInt8 => num!(UInt8Type),
        DataType::UInt16 => num!(UInt16Type),
        DataType::UInt32 => num!(UInt32Type),
        DataType::UInt64 => num!(UInt64Type),
        DataType::Float32 => num!(Float32Type),
        DataType::Float64 => num!(Float64Type),
        DataType::Float16 => Json::from(a.as_primitive::<Float16Type>().value(i).to_f32()),
        DataType::Utf8 => Json::String(a.as_string::<i32>().value(i).to_string()),
        DataType::LargeUtf8 => Json::String(a.as_string::<i64>().value(i).to_string()),
        DataType::Utf8View => Json::String(a.as_string_view().value(i).to_string()),
        DataType::List(_) => list_value(a.as_list::<i32>().value(i).as_ref())?,
        DataType::LargeList(_) => list_value(a.as_list::<i64>().value(i).as_ref())?,
        DataType::FixedSizeList(_, _) => list_value(a.as_fixed_size_list().value(i).as_ref())?,
        DataType::Struct(fields) => {
            let s = a.as_struct();
            let mut m = Map::new();
            for (f, col) in fields.iter().zip(s.columns()) {
                m.insert(f.name().clone(), array_value(col.as_ref(), i)?);
            }
            Json::Object(m)
        }
        DataType::Dictionary(_, _) => {
            let d = a.as_any_dictionary();
            let key = d.normalized_keys()[i];
            array_value(d.values().as_ref(), key)?
        }
        other => return Err(format!("column type {other} is not supported")),
    })
}

fn list_value(a: &dyn Array) -> std::result::Result<Json, String> {
    (0..a.len())
        .map(|k| array_value(a, k))
        .collect::<std::result::Result<Vec<_>, _>>()
        .map(Json::Array)
}
