//! Committed Parquet files back as JSON objects, one per row, for sinks that
//! republish outputs (the Kafka alerts and dead-letter topics). Times become
//! RFC 3339 strings, decimals exact strings; column names are unchanged.

use anyhow::{bail, Context, Result};
use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, Int32Type, Int64Type, TimestampMillisecondType};
use arrow_array::{Array, Decimal128Array};
use arrow_schema::{DataType, TimeUnit};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde_json::{Map, Value};
use tidemark_dataflow::rfc3339::format_rfc3339_ms;

pub fn rows_as_json(bytes: Vec<u8>) -> Result<Vec<Map<String, Value>>> {
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes::Bytes::from(bytes))
        .context("reading a Parquet footer")?
        .build()?;
    let mut rows = Vec::new();
    for batch in reader {
        let batch = batch.context("decoding Parquet")?;
        let schema = batch.schema();
        let start = rows.len();
        rows.resize(start + batch.num_rows(), Map::new());
        for (field, col) in schema.fields().iter().zip(batch.columns()) {
            for (i, row) in rows[start..].iter_mut().enumerate() {
                row.insert(field.name().clone(), value(col.as_ref(), i)?);
            }
        }
    }
    Ok(rows)
}

fn value(col: &dyn Array, i: usize) -> Result<Value> {
    if col.is_null(i) {
        return Ok(Value::Null);
    }
    Ok(match col.data_type() {
        DataType::Utf8 => Value::from(col.as_string::<i32>().value(i)),
        DataType::Int64 => Value::from(col.as_primitive::<Int64Type>().value(i)),
        DataType::Int32 => Value::from(col.as_primitive::<Int32Type>().value(i)),
        DataType::Float64 => Value::from(col.as_primitive::<Float64Type>().value(i)),
        DataType::Timestamp(TimeUnit::Millisecond, _) => Value::from(format_rfc3339_ms(
            col.as_primitive::<TimestampMillisecondType>().value(i),
        )),
        DataType::Decimal128(_, _) => {
            let d = col
                .as_any()
                .downcast_ref::<Decimal128Array>()
                .expect("decimal array");
            Value::from(d.value_as_string(i))
        }
        other => bail!("column type {other} is not one tidemark writes"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parquet_out::encode_rejects;
    use tidemark_dataflow::event::{Reject, RejectReason};

    #[test]
    fn rejects_come_back_as_their_columns() {
        let r = Reject {
            reason: RejectReason::Malformed,
            partition: 3,
            offset: 17,
            raw: b"{bad".to_vec(),
        };
        let bytes = encode_rejects(
            &[&r],
            &crate::manifest::SourceNames {
                main: "transactions".into(),
                reference: "merchants".into(),
            },
        )
        .unwrap();
        let back = rows_as_json(bytes).unwrap();
        assert_eq!(
            Value::Object(back[0].clone()),
            serde_json::json!({"raw": "{bad", "raw_encoding": "utf8", "reason": "MALFORMED",
                "source": "transactions", "partition": 3, "offset": 17})
        );
    }
}
