//! Answers encoded batch by batch, within caps on rows and bytes.
//!
//! A query's batches are encoded as they come (JSON rows or Arrow IPC messages), so an
//! answer is never built whole in memory. [`Caps`] cut it at `max_result_rows` rows or
//! `max_result_bytes` encoded bytes; the JSON form then ends with `"truncated": true` and
//! an `"error"` saying which cap was hit.
//!
//! JSON: `{"columns":[...],"rows":[[...],...]}` with values as JSON (timestamps as RFC
//! 3339 text, non-finite floats as null), then optionally `"truncated"` and `"error"`.

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::ipc::writer::StreamWriter;
use datafusion::arrow::json::writer::{make_encoder, EncoderOptions};

/// The caps of one answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caps {
    pub max_rows: usize,
    pub max_bytes: usize,
}

impl Default for Caps {
    fn default() -> Self {
        let q = weir_core::serving::QueryConfig::default();
        Caps {
            max_rows: q.max_result_rows,
            max_bytes: q.max_result_mb << 20,
        }
    }
}

/// What is left of the caps; `take` trims a batch to fit.
#[derive(Debug)]
pub struct Budget {
    caps: Caps,
    rows: usize,
    bytes: usize,
}

impl Budget {
    pub fn new(caps: Caps) -> Budget {
        Budget {
            caps,
            rows: 0,
            bytes: 0,
        }
    }

    /// The part of `batch` within the row cap, and whether rows were cut.
    pub fn take_rows(&mut self, batch: RecordBatch) -> (RecordBatch, bool) {
        let left = self.caps.max_rows - self.rows;
        if batch.num_rows() <= left {
            self.rows += batch.num_rows();
            (batch, false)
        } else {
            self.rows += left;
            (batch.slice(0, left), true)
        }
    }

    /// Counts `n` more bytes; false if they exceed the byte cap.
    pub fn take_bytes(&mut self, n: usize) -> bool {
        self.bytes += n;
        self.bytes <= self.caps.max_bytes
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn row_cap_message(&self) -> String {
        format!(
            "the answer has more than {} rows (query.max_result_rows); add a LIMIT or aggregate",
            self.caps.max_rows
        )
    }

    pub fn byte_cap_message(&self) -> String {
        format!(
            "the answer is larger than {} MiB (query.max_result_mb); add a LIMIT or select fewer columns",
            self.caps.max_bytes >> 20
        )
    }
}

/// An encoding of answers as chunks of bytes.
pub trait Encoder: Send {
    /// The first bytes (before any row).
    fn start(&mut self, schema: &SchemaRef) -> Result<Vec<u8>, ArrowError>;
    /// The bytes of one batch.
    fn batch(&mut self, batch: &RecordBatch) -> Result<Vec<u8>, ArrowError>;
    /// The last bytes; `cut` says why the answer was cut short, if it was.
    fn finish(&mut self, cut: Option<&str>) -> Result<Vec<u8>, ArrowError>;
}

/// `{"columns":[...],"rows":[[...]]}`, written as it comes.
#[derive(Default)]
pub struct JsonEncoder {
    any_row: bool,
}

impl Encoder for JsonEncoder {
    fn start(&mut self, schema: &SchemaRef) -> Result<Vec<u8>, ArrowError> {
        let names: Vec<&String> = schema.fields().iter().map(|f| f.name()).collect();
        let mut out = b"{\"columns\":".to_vec();
        serde_json::to_writer(&mut out, &names)
            .map_err(|e| ArrowError::JsonError(e.to_string()))?;
        out.extend_from_slice(b",\"rows\":[");
        Ok(out)
    }

    fn batch(&mut self, batch: &RecordBatch) -> Result<Vec<u8>, ArrowError> {
        let options = EncoderOptions::default().with_explicit_nulls(true);
        let fields = batch.schema().fields().clone();
        let mut encoders = fields
            .iter()
            .zip(batch.columns())
            .map(|(f, c)| make_encoder(f, c.as_ref(), &options))
            .collect::<Result<Vec<_>, _>>()?;
        let mut out = Vec::with_capacity(batch.get_array_memory_size().min(64 << 20));
        for row in 0..batch.num_rows() {
            if self.any_row {
                out.push(b',');
            }
            self.any_row = true;
            out.push(b'[');
            for (i, e) in encoders.iter_mut().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                if e.is_null(row) {
                    out.extend_from_slice(b"null");
                } else {
                    e.encode(row, &mut out);
                }
            }
            out.push(b']');
        }
        Ok(out)
    }

    fn finish(&mut self, cut: Option<&str>) -> Result<Vec<u8>, ArrowError> {
        let mut out = b"]".to_vec();
        if let Some(why) = cut {
            out.extend_from_slice(b",\"truncated\":true,\"error\":");
            serde_json::to_writer(&mut out, why)
                .map_err(|e| ArrowError::JsonError(e.to_string()))?;
        }
        out.push(b'}');
        Ok(out)
    }
}

/// An Arrow IPC stream, message by message. A cut answer is not finished: the stream
/// lacks its end marker, so readers report it incomplete.
#[derive(Default)]
pub struct IpcEncoder {
    writer: Option<StreamWriter<Vec<u8>>>,
}

impl IpcEncoder {
    fn take(&mut self) -> Vec<u8> {
        self.writer
            .as_mut()
            .map(|w| std::mem::take(w.get_mut()))
            .unwrap_or_default()
    }
}

impl Encoder for IpcEncoder {
    fn start(&mut self, schema: &SchemaRef) -> Result<Vec<u8>, ArrowError> {
        self.writer = Some(StreamWriter::try_new(Vec::new(), schema)?);
        Ok(self.take())
    }

    fn batch(&mut self, batch: &RecordBatch) -> Result<Vec<u8>, ArrowError> {
        if let Some(w) = self.writer.as_mut() {
            w.write(batch)?;
        }
        Ok(self.take())
    }

    fn finish(&mut self, cut: Option<&str>) -> Result<Vec<u8>, ArrowError> {
        if let Some(why) = cut {
            return Err(ArrowError::ComputeError(why.to_owned()));
        }
        if let Some(w) = self.writer.as_mut() {
            w.finish()?;
        }
        Ok(self.take())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Float64Array, Int64Array, StringArray};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use std::sync::Arc;

    fn batch() -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("n", DataType::Int64, true),
            Field::new("s", DataType::Utf8, true),
            Field::new("f", DataType::Float64, true),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from(vec![Some(1), None, Some(3)])),
                Arc::new(StringArray::from(vec![Some("a\"b"), Some("c"), None])),
                Arc::new(Float64Array::from(vec![1.5, f64::NAN, 2.0])),
            ],
        )
        .unwrap()
    }

    fn json(batches: &[RecordBatch], cut: Option<&str>) -> serde_json::Value {
        let mut e = JsonEncoder::default();
        let mut out = e.start(&batches[0].schema()).unwrap();
        for b in batches {
            out.extend(e.batch(b).unwrap());
        }
        out.extend(e.finish(cut).unwrap());
        serde_json::from_slice(&out).unwrap()
    }

    #[test]
    fn json_rows_are_arrays_in_column_order() {
        let v = json(&[batch(), batch().slice(0, 1)], None);
        assert_eq!(
            v,
            serde_json::json!({"columns":["n","s","f"],"rows":[[1,"a\"b",1.5],[null,"c",null],[3,null,2.0],[1,"a\"b",1.5]]})
        );
        let v = json(&[batch().slice(0, 0)], Some("cap"));
        assert_eq!(
            v,
            serde_json::json!({"columns":["n","s","f"],"rows":[],"truncated":true,"error":"cap"})
        );
    }

    #[test]
    fn caps_trim_rows_and_count_bytes() {
        let mut b = Budget::new(Caps {
            max_rows: 4,
            max_bytes: 10,
        });
        let (first, cut) = b.take_rows(batch());
        assert_eq!((first.num_rows(), cut), (3, false));
        let (second, cut) = b.take_rows(batch());
        assert_eq!((second.num_rows(), cut), (1, true));
        assert_eq!(b.rows(), 4);
        assert!(b.take_bytes(10));
        assert!(!b.take_bytes(1));
    }

    #[test]
    fn ipc_streams_read_back_and_cut_ones_fail() {
        let mut e = IpcEncoder::default();
        let mut out = e.start(&batch().schema()).unwrap();
        out.extend(e.batch(&batch()).unwrap());
        out.extend(e.finish(None).unwrap());
        let r = datafusion::arrow::ipc::reader::StreamReader::try_new(&out[..], None).unwrap();
        let rows: usize = r.map(|b| b.unwrap().num_rows()).sum();
        assert_eq!(rows, 3);
        let mut e = IpcEncoder::default();
        e.start(&batch().schema()).unwrap();
        assert!(e.finish(Some("cap")).is_err());
    }
}
