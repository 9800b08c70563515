//! Arrow Flight SQL on the gRPC listener (`[listen] grpc`), so standard clients (ADBC,
//! JDBC, pyarrow.flight) and the BI tools on top of them run SQL against the same
//! tables as `POST /api/v1/query`, browse those tables and run prepared statements.
//!
//! Authentication is the tenant's bearer token in the `authorization` metadata
//! (`Bearer TOKEN`; ADBC: `adbc.flight.sql.authorization_header`) on every call; with
//! no tenants configured, loopback clients are the default tenant. A query or listing
//! only ever sees its tenant's tables (the session `HotStore` builds for it).
//!
//! - Statements: `GetFlightInfo(CommandStatementQuery)` plans the query (its schema, no
//!   rows) and keeps it under a handle bound to the tenant; `DoGet(TicketStatementQuery)`
//!   runs it once, through the same admission, runtime, limits and caps as HTTP queries
//!   (`crate::queries`), streaming batches as they come ([`answer`]).
//! - Prepared statements with parameters ([`prepared`]): create, bind (`DoPut`),
//!   execute (`GetFlightInfo`, then `DoGet` as above), close.
//! - Metadata ([`metadata`]): `GetSqlInfo`, `GetCatalogs`, `GetDbSchemas`, `GetTables`
//!   (with the tables' Arrow schemas), `GetTableTypes`.
//!
//! Everything kept between calls lives in [`handles::Handles`], bounded per tenant.
//! Anything else (updates, ingestion, Substrait, transactions) answers UNIMPLEMENTED.

mod answer;
mod handles;
mod metadata;
mod prepared;

use std::sync::Arc;

use arrow_flight::sql::metadata::SqlInfoData;
use arrow_flight::sql::server::{FlightSqlService, PeekableFlightDataStream};
use arrow_flight::sql::{
    ActionClosePreparedStatementRequest, ActionCreatePreparedStatementRequest,
    ActionCreatePreparedStatementResult, Command, CommandGetCatalogs, CommandGetDbSchemas,
    CommandGetSqlInfo, CommandGetTableTypes, CommandGetTables, CommandPreparedStatementQuery,
    CommandStatementQuery, DoPutPreparedStatementResult, ProstMessageExt, SqlInfo,
    TicketStatementQuery,
};
use arrow_flight::{Action, FlightDescriptor, FlightEndpoint, FlightInfo, Ticket};
use datafusion::arrow::datatypes::SchemaRef;
use prost::Message;
use tonic::{Request, Response, Status};
use weir_core::config::DEFAULT_TENANT;
use weir_core::Config;
use weir_store::query_answer::IpcEncoder;
use weir_store::{HotStore, QueryError};

use crate::queries::QueryService;
use handles::{Handles, Pending};

pub struct FlightSql {
    config: Arc<Config>,
    queries: Arc<QueryService>,
    handles: Handles,
    sql_info: SqlInfoData,
}

fn status_of(e: QueryError) -> Status {
    match e {
        QueryError::Sql(m) | QueryError::Refused(m) | QueryError::Execution(m) => {
            Status::invalid_argument(m)
        }
        QueryError::TooExpensive(m) => Status::failed_precondition(m),
        QueryError::TenantBusy(m) => Status::resource_exhausted(m),
        QueryError::NodeBusy(m) => Status::unavailable(m),
        QueryError::Store(e) => Status::internal(e.to_string()),
    }
}

impl FlightSql {
    pub fn new(
        config: Arc<Config>,
        _store: Arc<HotStore>,
        queries: Arc<QueryService>,
    ) -> FlightSql {
        FlightSql {
            // Fixed values, built the same way by every start (and by the unit tests).
            sql_info: metadata::sql_info(&config).expect("the SqlInfo values are well-formed"),
            config,
            queries,
            handles: Handles::default(),
        }
    }

    fn tenant<T>(&self, request: &Request<T>) -> Result<String, Status> {
        if self.config.open_mode() {
            return match request.remote_addr() {
                Some(a) if a.ip().is_loopback() => Ok(DEFAULT_TENANT.to_owned()),
                _ => Err(Status::unauthenticated(
                    "no tenants are configured: only loopback clients are accepted",
                )),
            };
        }
        request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .and_then(|t| self.config.tenant_for_token(t.trim()))
            .map(str::to_owned)
            .ok_or_else(|| Status::unauthenticated("missing or unknown bearer token"))
    }

    /// Keep `pending` for `tenant` and answer with the ticket that runs it.
    fn pending_info(
        &self,
        tenant: &str,
        pending: Pending,
        schema: &SchemaRef,
        descriptor: FlightDescriptor,
    ) -> Result<Response<FlightInfo>, Status> {
        let info = FlightInfo::new()
            .try_with_schema(schema)
            .map_err(|e| Status::internal(e.to_string()))?;
        let handle = self.handles.add_pending(tenant, pending);
        let ticket = TicketStatementQuery {
            statement_handle: handles::to_bytes(handle),
        };
        let endpoint =
            FlightEndpoint::new().with_ticket(Ticket::new(ticket.as_any().encode_to_vec()));
        Ok(Response::new(
            info.with_endpoint(endpoint)
                .with_descriptor(descriptor)
                .with_total_records(-1),
        ))
    }

    async fn metadata_info(
        &self,
        cmd: Command,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.tenant(&request)?;
        metadata::flight_info(cmd, &self.sql_info, request.into_inner()).map(Response::new)
    }

    async fn metadata_rows(
        &self,
        cmd: Command,
        request: Request<Ticket>,
    ) -> Result<Response<answer::DoGetStream>, Status> {
        let tenant = self.tenant(&request)?;
        let tables = if metadata::needs_tables(&cmd) {
            self.queries.tables(&tenant).await.map_err(status_of)?
        } else {
            Vec::new()
        };
        let batch = metadata::rows(cmd, &self.sql_info, &tables)?;
        Ok(Response::new(answer::batch(batch)))
    }
}

#[tonic::async_trait]
impl FlightSqlService for FlightSql {
    type FlightService = FlightSql;

    async fn get_flight_info_statement(
        &self,
        query: CommandStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let tenant = self.tenant(&request)?;
        let (schema, parameters) = self
            .queries
            .prepare(&tenant, query.query.clone(), None)
            .await
            .map_err(status_of)?;
        if !parameters.is_empty() {
            return Err(Status::invalid_argument(format!(
                "the statement has {} parameter(s): run it as a prepared statement and bind them",
                parameters.len()
            )));
        }
        let pending = Pending {
            sql: query.query,
            params: None,
        };
        self.pending_info(&tenant, pending, &schema, request.into_inner())
    }

    async fn do_get_statement(
        &self,
        ticket: TicketStatementQuery,
        request: Request<Ticket>,
    ) -> Result<Response<answer::DoGetStream>, Status> {
        let tenant = self.tenant(&request)?;
        let gone = || Status::not_found("unknown or expired statement handle");
        let handle = handles::from_bytes(&ticket.statement_handle).ok_or_else(gone)?;
        // Another tenant's handle is as unknown as a made-up one.
        let pending = self
            .handles
            .take_pending(&tenant, handle)
            .ok_or_else(gone)?;
        let answer = self
            .queries
            .run_with(&tenant, pending.sql, pending.params, IpcEncoder::default())
            .await
            .map_err(status_of)?;
        Ok(Response::new(answer::stream(answer)))
    }

    async fn get_flight_info_prepared_statement(
        &self,
        cmd: CommandPreparedStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let tenant = self.tenant(&request)?;
        let (pending, schema) =
            prepared::execute(&self.queries, &self.handles, &tenant, cmd).await?;
        self.pending_info(&tenant, pending, &schema, request.into_inner())
    }

    async fn do_put_prepared_statement_query(
        &self,
        cmd: CommandPreparedStatementQuery,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<DoPutPreparedStatementResult, Status> {
        let tenant = self.tenant(&request)?;
        prepared::bind(&self.handles, &tenant, cmd, request.into_inner()).await
    }

    async fn do_action_create_prepared_statement(
        &self,
        query: ActionCreatePreparedStatementRequest,
        request: Request<Action>,
    ) -> Result<ActionCreatePreparedStatementResult, Status> {
        let tenant = self.tenant(&request)?;
        if query.transaction_id.is_some() {
            return Err(Status::invalid_argument("transactions are not supported"));
        }
        prepared::create(&self.queries, &self.handles, &tenant, query.query).await
    }

    async fn do_action_close_prepared_statement(
        &self,
        query: ActionClosePreparedStatementRequest,
        request: Request<Action>,
    ) -> Result<(), Status> {
        let tenant = self.tenant(&request)?;
        prepared::close(&self.handles, &tenant, &query.prepared_statement_handle)
    }

    async fn get_flight_info_sql_info(
        &self,
        query: CommandGetSqlInfo,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.metadata_info(Command::CommandGetSqlInfo(query), request)
            .await
    }

    async fn do_get_sql_info(
        &self,
        query: CommandGetSqlInfo,
        request: Request<Ticket>,
    ) -> Result<Response<answer::DoGetStream>, Status> {
        self.metadata_rows(Command::CommandGetSqlInfo(query), request)
            .await
    }

    async fn get_flight_info_catalogs(
        &self,
        query: CommandGetCatalogs,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.metadata_info(Command::CommandGetCatalogs(query), request)
            .await
    }

    async fn do_get_catalogs(
        &self,
        query: CommandGetCatalogs,
        request: Request<Ticket>,
    ) -> Result<Response<answer::DoGetStream>, Status> {
        self.metadata_rows(Command::CommandGetCatalogs(query), request)
            .await
    }

    async fn get_flight_info_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.metadata_info(Command::CommandGetDbSchemas(query), request)
            .await
    }

    async fn do_get_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<Ticket>,
    ) -> Result<Response<answer::DoGetStream>, Status> {
        self.metadata_rows(Command::CommandGetDbSchemas(query), request)
            .await
    }

    async fn get_flight_info_tables(
        &self,
        query: CommandGetTables,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.metadata_info(Command::CommandGetTables(query), request)
            .await
    }

    async fn do_get_tables(
        &self,
        query: CommandGetTables,
        request: Request<Ticket>,
    ) -> Result<Response<answer::DoGetStream>, Status> {
        self.metadata_rows(Command::CommandGetTables(query), request)
            .await
    }

    async fn get_flight_info_table_types(
        &self,
        query: CommandGetTableTypes,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.metadata_info(Command::CommandGetTableTypes(query), request)
            .await
    }

    async fn do_get_table_types(
        &self,
        query: CommandGetTableTypes,
        request: Request<Ticket>,
    ) -> Result<Response<answer::DoGetStream>, Status> {
        self.metadata_rows(Command::CommandGetTableTypes(query), request)
            .await
    }

    async fn register_sql_info(&self, _id: i32, _result: &SqlInfo) {}
}

#[cfg(test)]
mod tests {
    use super::handles::MAX_PENDING;
    use super::*;
    use futures::StreamExt;

    fn request<T>(msg: T, token: &str) -> Request<T> {
        let mut r = Request::new(msg);
        r.metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        r
    }

    /// A statement handle answers only its own tenant, once.
    #[tokio::test]
    async fn results_belong_to_their_tenant() {
        let dir = tempfile::tempdir().unwrap();
        let config =
            Config::from_toml("[tenants.a]\ntokens = [\"ta\"]\n[tenants.b]\ntokens = [\"tb\"]\n")
                .unwrap();
        let store = Arc::new(HotStore::open(&dir.path().join("s.redb"), usize::MAX).unwrap());
        let queries = Arc::new(QueryService::new(
            store.clone(),
            &config.query,
            tokio::runtime::Handle::current(),
            &weir_core::metrics::Registry::default(),
        ));
        let f = FlightSql::new(Arc::new(config), store, queries);
        let q = CommandStatementQuery {
            query: "SELECT 1 AS one".into(),
            transaction_id: None,
        };
        let bad = f
            .get_flight_info_statement(q.clone(), request(FlightDescriptor::default(), "nope"))
            .await
            .unwrap_err();
        assert_eq!(bad.code(), tonic::Code::Unauthenticated);
        let info = f
            .get_flight_info_statement(q.clone(), request(FlightDescriptor::default(), "ta"))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(info.total_records, -1, "known only once it runs");
        // Another tenant's calls never evict this tenant's statement.
        for _ in 0..2 * MAX_PENDING {
            f.get_flight_info_statement(q.clone(), request(FlightDescriptor::default(), "tb"))
                .await
                .unwrap();
        }
        assert_eq!(f.handles.count("b"), (MAX_PENDING, 0));
        assert_eq!(f.handles.count("a"), (1, 0));
        let ticket = info.endpoint[0].ticket.clone().unwrap();
        let any = arrow_flight::sql::Any::decode(ticket.ticket.clone()).unwrap();
        let handle: TicketStatementQuery = any.unpack().unwrap().unwrap();
        let other = f
            .do_get_statement(handle.clone(), request(ticket.clone(), "tb"))
            .await
            .err()
            .unwrap();
        assert_eq!(
            other.code(),
            tonic::Code::NotFound,
            "another tenant's handle"
        );
        let mine = f
            .do_get_statement(handle.clone(), request(ticket.clone(), "ta"))
            .await
            .unwrap()
            .into_inner();
        let data: Vec<_> = mine.collect().await;
        let batches = arrow_flight::utils::flight_data_to_batches(
            &data.into_iter().map(|d| d.unwrap()).collect::<Vec<_>>(),
        )
        .unwrap();
        assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 1);
        let again = f
            .do_get_statement(handle, request(ticket, "ta"))
            .await
            .err()
            .unwrap();
        assert_eq!(again.code(), tonic::Code::NotFound, "fetched once");
    }
}
