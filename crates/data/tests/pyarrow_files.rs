//! Parquet (snappy, zstd) and Arrow IPC stream files written by pyarrow read back as the rows
//! they were made from. Fixtures: tools/data/make_fixtures.py (`make_columnar`).

use runner_data::source::{InputFile, fail_on_bad_row, read_rows};
use runner_recipe::plan::FileFormat;
use serde_json::Value;
use std::path::PathBuf;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

#[test]
fn pyarrow_written_files_read_back() {
    for name in ["chat", "alpaca"] {
        let want: Value = serde_json::from_str(
            &std::fs::read_to_string(fixtures().join(format!("pyarrow_{name}.json"))).unwrap(),
        )
        .unwrap();
        for (file, format) in [
            (
                format!("pyarrow_{name}_snappy.parquet"),
                FileFormat::Parquet,
            ),
            (format!("pyarrow_{name}_zstd.parquet"), FileFormat::Parquet),
            (format!("pyarrow_{name}.arrow"), FileFormat::Arrow),
        ] {
            let input = InputFile {
                path: fixtures().join(&file),
                format,
            };
            let mut got = Vec::new();
            read_rows(&input, 16, &mut fail_on_bad_row, &mut |rows| {
                got.extend(rows.into_iter().map(|r| Value::Object(r.value)));
                Ok(())
            })
            .unwrap_or_else(|e| panic!("{file}: {e}"));
            assert_eq!(Value::Array(got), want, "{file}");
        }
    }
}
