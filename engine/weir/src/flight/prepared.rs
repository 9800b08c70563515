//! Prepared statements of Flight SQL, with parameters.
//!
//! - `CreatePreparedStatement` plans the SQL for the tenant (admitted, within the time
//!   limit) and keeps it under a handle bound to the tenant, answering the dataset
//!   schema and the parameter schema (`$1`, `$2`, ...; see
//!   [`weir_store::query_params`] for the `?` and `$n` placeholders).
//! - `DoPut(CommandPreparedStatementQuery)` binds one row of parameter values: read
//!   within [`MAX_BIND_BYTES`], [`MAX_BIND_MESSAGES`] and [`BIND_TIMEOUT`], checked
//!   against the parameters (number, types, [`MAX_PARAM_BYTES`]) and kept with the
//!   handle until the next bind.
//! - `GetFlightInfo(CommandPreparedStatementQuery)` plans the statement with its values
//!   and hands out a ticket for `DoGet`, which runs it like any statement (admission,
//!   limits, timeout, streaming). Values become literals of the logical plan; they are
//!   never put into SQL text.
//! - `ClosePreparedStatement` drops the handle.

use std::sync::Arc;
use std::time::Duration;

use arrow_flight::decode::FlightRecordBatchStream;
use arrow_flight::error::FlightError;
use arrow_flight::sql::server::PeekableFlightDataStream;
use arrow_flight::sql::{
    ActionCreatePreparedStatementResult, CommandPreparedStatementQuery,
    DoPutPreparedStatementResult,
};
use arrow_flight::{IpcMessage, SchemaAsIpc};
use datafusion::arrow::datatypes::Schema;
use datafusion::arrow::ipc::writer::IpcWriteOptions;
use datafusion::scalar::ScalarValue;
use futures::{StreamExt, TryStreamExt};
use tonic::Status;
use weir_store::query_params::MAX_PARAM_BYTES;

use super::handles::{self, Handles, Pending, Prepared};
use super::status_of;
use crate::queries::QueryService;

/// Most bytes of one `DoPut` of parameters: the values and their Arrow framing.
pub const MAX_BIND_BYTES: usize = MAX_PARAM_BYTES + (64 << 10);
/// Most Flight messages of one `DoPut` of parameters.
pub const MAX_BIND_MESSAGES: usize = 64;
/// How long one `DoPut` of parameters may take to arrive.
pub const BIND_TIMEOUT: Duration = Duration::from_secs(30);

fn unknown() -> Status {
    Status::not_found("unknown, closed or expired prepared statement handle")
}

/// A schema as the IPC message Flight SQL carries.
fn ipc(schema: &Schema) -> Result<prost::bytes::Bytes, Status> {
    let IpcMessage(bytes) = SchemaAsIpc::new(schema, &IpcWriteOptions::default())
        .try_into()
        .map_err(|e: datafusion::arrow::error::ArrowError| Status::internal(e.to_string()))?;
    Ok(bytes)
}

/// `CreatePreparedStatement`.
pub async fn create(
    queries: &Arc<QueryService>,
    handles: &Handles,
    tenant: &str,
    sql: String,
) -> Result<ActionCreatePreparedStatementResult, Status> {
    let (dataset, parameters) = queries
        .prepare(tenant, sql.clone(), None)
        .await
        .map_err(status_of)?;
    let dataset_schema = ipc(&dataset)?;
    let parameter_schema = if parameters.is_empty() {
        prost::bytes::Bytes::new()
    } else {
        ipc(&Schema::new(parameters.clone()))?
    };
    let handle = handles.add_prepared(
        tenant,
        Prepared {
            sql,
            parameters,
            bound: None,
        },
    );
    Ok(ActionCreatePreparedStatementResult {
        prepared_statement_handle: handles::to_bytes(handle),
        dataset_schema,
        parameter_schema,
    })
}

/// `DoPut(CommandPreparedStatementQuery)`: bind one row of values.
pub async fn bind(
    handles: &Handles,
    tenant: &str,
    cmd: CommandPreparedStatementQuery,
    stream: PeekableFlightDataStream,
) -> Result<DoPutPreparedStatementResult, Status> {
    let handle = handles::from_bytes(&cmd.prepared_statement_handle).ok_or_else(unknown)?;
    // Known before any value is read: another tenant's handle takes nothing.
    let parameters = handles
        .with_prepared(tenant, handle, |p| p.parameters.clone())
        .ok_or_else(unknown)?;
    let values = tokio::time::timeout(BIND_TIMEOUT, read_row(stream))
        .await
        .map_err(|_| {
            Status::deadline_exceeded(format!(
                "the parameter values did not arrive within {} s",
                BIND_TIMEOUT.as_secs()
            ))
        })??;
    let values =
        weir_store::query_params::bind(&parameters, values).map_err(Status::invalid_argument)?;
    handles
        .with_prepared(tenant, handle, |p| p.bound = Some(values))
        .ok_or_else(unknown)?;
    Ok(DoPutPreparedStatementResult {
        prepared_statement_handle: Some(handles::to_bytes(handle)),
    })
}

/// The one row of parameter values a `DoPut` carries, within the byte and message
/// bounds.
async fn read_row(stream: PeekableFlightDataStream) -> Result<Vec<ScalarValue>, Status> {
    let bounded = stream.scan((0usize, 0usize), |(bytes, messages), item| {
        let out = item.map_err(FlightError::from).and_then(|d| {
            *bytes += d.data_header.len() + d.data_body.len() + d.app_metadata.len();
            *messages += 1;
            if *bytes > MAX_BIND_BYTES {
                Err(Status::invalid_argument(format!(
                    "the parameter values take more than {MAX_BIND_BYTES} bytes"
                ))
                .into())
            } else if *messages > MAX_BIND_MESSAGES {
                Err(Status::invalid_argument(format!(
                    "the parameter values come in more than {MAX_BIND_MESSAGES} messages"
                ))
                .into())
            } else {
                Ok(d)
            }
        });
        std::future::ready(Some(out))
    });
    let batches: Vec<_> = FlightRecordBatchStream::new_from_flight_data(bounded)
        .try_collect()
        .await
        .map_err(|e| match e {
            FlightError::Tonic(s) => *s,
            e => Status::invalid_argument(format!("the parameter values are not Arrow data: {e}")),
        })?;
    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
    if rows != 1 {
        return Err(Status::invalid_argument(format!(
            "bind exactly one row of parameter values; {rows} rows were sent"
        )));
    }
    let Some(batch) = batches.into_iter().find(|b| b.num_rows() == 1) else {
        return Err(Status::invalid_argument("no row of parameter values"));
    };
    batch
        .columns()
        .iter()
        .map(|c| match ScalarValue::try_from_array(c, 0) {
            Ok(ScalarValue::Dictionary(_, v)) => Ok(*v),
            Ok(v) => Ok(v),
            Err(e) => Err(Status::invalid_argument(format!(
                "a parameter value cannot be read: {e}"
            ))),
        })
        .collect()
}

/// `GetFlightInfo(CommandPreparedStatementQuery)`: plan the statement with its bound
/// values; the statement to run once by `DoGet`, and its schema.
pub async fn execute(
    queries: &Arc<QueryService>,
    handles: &Handles,
    tenant: &str,
    cmd: CommandPreparedStatementQuery,
) -> Result<(Pending, datafusion::arrow::datatypes::SchemaRef), Status> {
    let handle = handles::from_bytes(&cmd.prepared_statement_handle).ok_or_else(unknown)?;
    let (sql, params, wanted) = handles
        .with_prepared(tenant, handle, |p| {
            (p.sql.clone(), p.bound.clone(), p.parameters.len())
        })
        .ok_or_else(unknown)?;
    if wanted > 0 && params.is_none() {
        return Err(Status::invalid_argument(format!(
            "the prepared statement has {wanted} parameter(s) and no values bound to them"
        )));
    }
    let (schema, _) = queries
        .prepare(tenant, sql.clone(), params.clone())
        .await
        .map_err(status_of)?;
    Ok((Pending { sql, params }, schema))
}

/// `ClosePreparedStatement`.
pub fn close(handles: &Handles, tenant: &str, handle: &[u8]) -> Result<(), Status> {
    let handle = handles::from_bytes(handle).ok_or_else(unknown)?;
    if handles.close_prepared(tenant, handle) {
        Ok(())
    } else {
        Err(unknown())
    }
}
