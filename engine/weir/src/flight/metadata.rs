//! The metadata calls of Flight SQL, per tenant: `GetSqlInfo`, `GetCatalogs`,
//! `GetDbSchemas`, `GetTables` and `GetTableTypes`.
//!
//! `GetFlightInfo` answers with the listing's schema and a ticket that is the command
//! itself (it holds only the client's own filters); `DoGet` builds the listing for the
//! tenant of *that* call, from the tables its SQL can name
//! ([`weir_store::HotStore::tables`], through the query service's admission and time
//! limit). Name filters are SQL `LIKE` patterns ([`like`]): `%` any run of characters,
//! `_` any one, `\` makes the next one literal.

use std::collections::BTreeSet;

use arrow_flight::sql::metadata::{
    GetCatalogsBuilder, GetDbSchemasBuilder, GetTablesBuilder, SqlInfoData, SqlInfoDataBuilder,
};
use arrow_flight::sql::{
    Command, CommandGetDbSchemas, CommandGetTables, SqlInfo, SqlNullOrdering,
    SqlOuterJoinsSupportLevel, SqlSupportedCaseSensitivity, SqlSupportedTransaction,
    SupportedSqlGrammar,
};
use arrow_flight::{FlightDescriptor, FlightEndpoint, FlightInfo, Ticket};
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use prost::Message;
use std::sync::Arc;
use tonic::Status;
use weir_core::Config;
use weir_store::{TableInfo, TableKind};

/// Longest name filter pattern accepted.
pub const MAX_PATTERN: usize = 1024;

/// What the server tells `GetSqlInfo` (ADBC's `adbc_get_info`, JDBC's
/// `DatabaseMetaData`).
pub fn sql_info(config: &Config) -> Result<SqlInfoData, Status> {
    let mut b = SqlInfoDataBuilder::new();
    b.append(SqlInfo::FlightSqlServerName, "Weir");
    b.append(SqlInfo::FlightSqlServerVersion, env!("CARGO_PKG_VERSION"));
    b.append(SqlInfo::FlightSqlServerReadOnly, true);
    b.append(SqlInfo::FlightSqlServerSql, true);
    b.append(SqlInfo::FlightSqlServerSubstrait, false);
    b.append(
        SqlInfo::FlightSqlServerTransaction,
        SqlSupportedTransaction::None as i32,
    );
    b.append(SqlInfo::FlightSqlServerCancel, false);
    b.append(SqlInfo::FlightSqlServerBulkIngestion, false);
    let timeout_ms = config.query.timeout_secs.saturating_mul(1000);
    b.append(
        SqlInfo::FlightSqlServerStatementTimeout,
        i32::try_from(timeout_ms).unwrap_or(i32::MAX),
    );
    b.append(SqlInfo::SqlDdlCatalog, false);
    b.append(SqlInfo::SqlDdlSchema, false);
    b.append(SqlInfo::SqlDdlTable, false);
    b.append(SqlInfo::SqlTransactionsSupported, false);
    // DataFusion folds unquoted identifiers to lower case; quoted ones keep theirs.
    b.append(
        SqlInfo::SqlIdentifierCase,
        SqlSupportedCaseSensitivity::SqlCaseSensitivityLowercase as i32,
    );
    b.append(SqlInfo::SqlIdentifierQuoteChar, "\"");
    b.append(SqlInfo::SqlAllTablesAreSelectable, true);
    // Ascending puts nulls last, descending first: nulls sort as the largest values.
    b.append(
        SqlInfo::SqlNullOrdering,
        SqlNullOrdering::SqlNullsSortedHigh as i32,
    );
    b.append(SqlInfo::SqlSearchStringEscape, "\\");
    b.append(SqlInfo::SqlSupportsColumnAliasing, true);
    b.append(SqlInfo::SqlSupportsTableCorrelationNames, true);
    b.append(SqlInfo::SqlSupportsExpressionsInOrderBy, true);
    b.append(
        SqlInfo::SqlSupportedGrammar,
        (1 << SupportedSqlGrammar::SqlMinimumGrammar as i32)
            | (1 << SupportedSqlGrammar::SqlCoreGrammar as i32),
    );
    b.append(
        SqlInfo::SqlOuterJoinsSupportLevel,
        SqlOuterJoinsSupportLevel::SqlFullOuterJoins as i32,
    );
    b.append(SqlInfo::SqlSchemaTerm, "schema");
    b.append(SqlInfo::SqlCatalogTerm, "catalog");
    b.append(SqlInfo::SqlCatalogAtStart, true);
    b.append(SqlInfo::SqlSelectForUpdateSupported, false);
    b.append(SqlInfo::SqlStoredProceduresSupported, false);
    b.append(SqlInfo::SqlCorrelatedSubqueriesSupported, true);
    b.append(
        SqlInfo::SqlMaxStatementLength,
        config.query.max_sql_bytes as i64,
    );
    b.append(
        SqlInfo::SqlMaxTablesInSelect,
        config.query.max_relations as i64,
    );
    b.build().map_err(|e| Status::internal(e.to_string()))
}

/// Whether `text` matches the SQL `LIKE` pattern `pattern`: `%` matches any run of
/// characters (none included), `_` any one character, `\` makes the next character
/// literal; everything else matches itself, case included. Time at most
/// O(pattern × text), no recursion.
pub fn like(pattern: &str, text: &str) -> bool {
    #[derive(PartialEq)]
    enum Tok {
        Any,
        One,
        Lit(char),
    }
    let mut pat = Vec::new();
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        pat.push(match c {
            '%' => Tok::Any,
            '_' => Tok::One,
            // A trailing `\` stands for itself.
            '\\' => Tok::Lit(chars.next().unwrap_or('\\')),
            c => Tok::Lit(c),
        });
    }
    let text: Vec<char> = text.chars().collect();
    let (mut p, mut t) = (0, 0);
    // The last `%` seen, and where in the text its run ends for now.
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pat.get(p) {
            Some(Tok::Any) => {
                star = Some((p, t));
                p += 1;
            }
            Some(Tok::One) => {
                p += 1;
                t += 1;
            }
            Some(Tok::Lit(c)) if *c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match star {
                // Let the last `%` take one more character and retry from there.
                Some((sp, st)) => {
                    star = Some((sp, st + 1));
                    p = sp + 1;
                    t = st + 1;
                }
                None => return false,
            },
        }
    }
    pat[p..].iter().all(|x| *x == Tok::Any)
}

/// A name filter from a client: `None` matches everything.
fn pattern(p: &Option<String>, what: &str) -> Result<(), Status> {
    match p {
        Some(p) if p.len() > MAX_PATTERN => Err(Status::invalid_argument(format!(
            "the {what} pattern has {} bytes, more than the {MAX_PATTERN} allowed",
            p.len()
        ))),
        _ => Ok(()),
    }
}

fn matches(p: &Option<String>, name: &str) -> bool {
    p.as_deref().is_none_or(|p| like(p, name))
}

/// The schema a metadata command answers with.
pub fn schema(cmd: &Command, sql_info: &SqlInfoData) -> Result<SchemaRef, Status> {
    Ok(match cmd {
        Command::CommandGetSqlInfo(_) => sql_info.schema(),
        Command::CommandGetCatalogs(_) => GetCatalogsBuilder::new().schema(),
        Command::CommandGetDbSchemas(_) => {
            GetDbSchemasBuilder::new(None::<String>, None::<String>).schema()
        }
        Command::CommandGetTables(c) => GetTablesBuilder::new(
            None::<String>,
            None::<String>,
            None::<String>,
            Vec::<String>::new(),
            c.include_schema,
        )
        .schema(),
        Command::CommandGetTableTypes(_) => table_types_schema(),
        other => {
            return Err(Status::unimplemented(format!(
                "{} is not supported",
                other.type_url()
            )))
        }
    })
}

fn table_types_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![Field::new(
        "table_type",
        DataType::Utf8,
        false,
    )]))
}

/// `GetFlightInfo` of a metadata command: its schema, and the command as the ticket.
pub fn flight_info(
    cmd: Command,
    sql_info: &SqlInfoData,
    descriptor: FlightDescriptor,
) -> Result<FlightInfo, Status> {
    let schema = schema(&cmd, sql_info)?;
    let ticket = Ticket::new(cmd.into_any().encode_to_vec());
    FlightInfo::new()
        .try_with_schema(&schema)
        .map_err(|e| Status::internal(e.to_string()))
        .map(|info| {
            info.with_endpoint(FlightEndpoint::new().with_ticket(ticket))
                .with_descriptor(descriptor)
                .with_total_records(-1)
        })
}

/// The rows of a metadata command for a tenant whose SQL names `tables`.
pub fn rows(
    cmd: Command,
    sql_info: &SqlInfoData,
    tables: &[TableInfo],
) -> Result<RecordBatch, Status> {
    let arrow = |e: arrow_flight::error::FlightError| Status::internal(e.to_string());
    match cmd {
        Command::CommandGetSqlInfo(c) => c.into_builder(sql_info).build().map_err(arrow),
        Command::CommandGetCatalogs(_) => {
            let mut b = GetCatalogsBuilder::new();
            for c in tables.iter().map(|t| &t.catalog).collect::<BTreeSet<_>>() {
                b.append(c);
            }
            b.build().map_err(arrow)
        }
        Command::CommandGetDbSchemas(c) => db_schemas(c, tables),
        Command::CommandGetTables(c) => get_tables(c, tables),
        Command::CommandGetTableTypes(_) => {
            let kinds: BTreeSet<&str> = [TableKind::Table, TableKind::View]
                .iter()
                .map(|k| k.as_str())
                .collect();
            let col = datafusion::arrow::array::StringArray::from_iter_values(kinds);
            RecordBatch::try_new(table_types_schema(), vec![Arc::new(col)])
                .map_err(|e| Status::internal(e.to_string()))
        }
        other => Err(Status::unimplemented(format!(
            "{} is not supported",
            other.type_url()
        ))),
    }
}

/// Whether a listing needs the tenant's tables (the others are the same for all).
pub fn needs_tables(cmd: &Command) -> bool {
    matches!(
        cmd,
        Command::CommandGetCatalogs(_)
            | Command::CommandGetDbSchemas(_)
            | Command::CommandGetTables(_)
    )
}

fn db_schemas(c: CommandGetDbSchemas, tables: &[TableInfo]) -> Result<RecordBatch, Status> {
    pattern(&c.db_schema_filter_pattern, "schema")?;
    let mut b = GetDbSchemasBuilder::new(None::<String>, None::<String>);
    let found: BTreeSet<(&str, &str)> = tables
        .iter()
        .filter(|t| c.catalog.as_deref().is_none_or(|want| t.catalog == want))
        .filter(|t| matches(&c.db_schema_filter_pattern, &t.schema))
        .map(|t| (t.catalog.as_str(), t.schema.as_str()))
        .collect();
    for (catalog, schema) in found {
        b.append(catalog, schema);
    }
    b.build().map_err(|e| Status::internal(e.to_string()))
}

fn get_tables(c: CommandGetTables, tables: &[TableInfo]) -> Result<RecordBatch, Status> {
    pattern(&c.db_schema_filter_pattern, "schema")?;
    pattern(&c.table_name_filter_pattern, "table name")?;
    let mut b = GetTablesBuilder::new(
        None::<String>,
        None::<String>,
        None::<String>,
        Vec::<String>::new(),
        c.include_schema,
    );
    let wanted = tables.iter().filter(|t| {
        c.catalog.as_deref().is_none_or(|want| t.catalog == want)
            && matches(&c.db_schema_filter_pattern, &t.schema)
            && matches(&c.table_name_filter_pattern, &t.name)
            && (c.table_types.is_empty() || c.table_types.iter().any(|k| k == t.kind.as_str()))
    });
    for t in wanted {
        b.append(&t.catalog, &t.schema, &t.name, t.kind.as_str(), &t.arrow)
            .map_err(|e| Status::internal(e.to_string()))?;
    }
    b.build().map_err(|e| Status::internal(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{AsArray, BinaryArray};

    #[test]
    fn like_patterns() {
        for (p, t) in [
            ("logs", "logs"),
            ("%", ""),
            ("%", "anything"),
            ("l%", "logs"),
            ("%s", "logs"),
            ("%og%", "logs"),
            ("l_gs", "logs"),
            ("____", "logs"),
            ("metrics%", "metrics_1m"),
            ("metrics\\_1m", "metrics_1m"),
            ("100\\%", "100%"),
            ("%a%b%c", "xxaxxbxxbxc"),
            ("a\\", "a\\"),
            ("é_", "éa"),
        ] {
            assert!(like(p, t), "{p:?} should match {t:?}");
        }
        for (p, t) in [
            ("logs", "log"),
            ("logs", "Logs"),
            ("l_gs", "lgs"),
            ("___", "logs"),
            ("%x%", "logs"),
            ("metrics\\_1m", "metricsX1m"),
            ("100\\%", "1000"),
            ("", "logs"),
            ("%a%b%c", "xxaxxbxxbx"),
        ] {
            assert!(!like(p, t), "{p:?} should not match {t:?}");
        }
        // Pathological patterns stay fast: no backtracking blow-up.
        let text = "a".repeat(2000);
        let pat = format!("{}b", "%a".repeat(500));
        let started = std::time::Instant::now();
        assert!(!like(&pat, &text));
        assert!(started.elapsed() < std::time::Duration::from_secs(2));
    }

    fn table(name: &str, kind: TableKind) -> TableInfo {
        TableInfo {
            catalog: "datafusion".into(),
            schema: "public".into(),
            name: name.into(),
            kind,
            arrow: Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, true)])),
        }
    }

    fn names(b: &RecordBatch) -> Vec<String> {
        b.column_by_name("table_name")
            .unwrap()
            .as_string::<i32>()
            .iter()
            .map(|s| s.unwrap().to_owned())
            .collect()
    }

    #[test]
    fn tables_filter_by_catalog_schema_name_and_type() {
        let tables = [
            table("logs", TableKind::Table),
            table("metrics", TableKind::Table),
            table("metrics_1m", TableKind::View),
        ];
        let info = sql_info(&Config::from_toml("").unwrap()).unwrap();
        let get = |c: CommandGetTables| rows(Command::CommandGetTables(c), &info, &tables).unwrap();
        let all = get(CommandGetTables::default());
        assert_eq!(names(&all), ["logs", "metrics", "metrics_1m"]);
        assert_eq!(all.num_columns(), 4, "no schemas unless asked");
        let views = get(CommandGetTables {
            table_types: vec!["VIEW".into()],
            ..Default::default()
        });
        assert_eq!(names(&views), ["metrics_1m"]);
        let pattern = get(CommandGetTables {
            table_name_filter_pattern: Some("metric_".into()),
            ..Default::default()
        });
        assert_eq!(names(&pattern), ["metrics"], "`_` is one character");
        let with_schema = get(CommandGetTables {
            catalog: Some("datafusion".into()),
            db_schema_filter_pattern: Some("pub%".into()),
            table_name_filter_pattern: Some("logs".into()),
            include_schema: true,
            ..Default::default()
        });
        assert_eq!(names(&with_schema), ["logs"]);
        let ipc = with_schema
            .column_by_name("table_schema")
            .unwrap()
            .as_any()
            .downcast_ref::<BinaryArray>()
            .unwrap()
            .value(0)
            .to_vec();
        let schema = arrow_flight::IpcMessage(ipc.into());
        let schema = Schema::try_from(schema).unwrap();
        assert_eq!(&schema, tables[0].arrow.as_ref());
        let other_catalog = get(CommandGetTables {
            catalog: Some("other".into()),
            ..Default::default()
        });
        assert!(names(&other_catalog).is_empty());
        let too_long = rows(
            Command::CommandGetTables(CommandGetTables {
                table_name_filter_pattern: Some("%".repeat(MAX_PATTERN + 1)),
                ..Default::default()
            }),
            &info,
            &tables,
        )
        .unwrap_err();
        assert_eq!(too_long.code(), tonic::Code::InvalidArgument);
    }
}
