//! The sink's SQL: multi-row upserts and deletes for a dialect, with placeholders only, and the
//! parameters of a row. Table names are validated identifiers; values are never spliced.

use crate::dataflow::wide::WideRow;
use crate::schema::{Dialect, WIDE_COLUMNS};

/// A statement parameter, converted to each driver's value type by its writer.
#[derive(Debug, Clone, PartialEq)]
pub enum Param<'a> {
    Null,
    Int(i64),
    Text(&'a str),
    /// A TIMESTAMP value: seconds since the epoch, UTC.
    Time(i64),
}

/// The wide table a sink writes: its name (a validated identifier) and the columns the spec's
/// lookup tables add after the seed's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WideTable {
    pub name: String,
    pub extra_columns: Vec<String>,
}

impl WideTable {
    /// Its columns: the seed's, then the lookup tables'.
    pub fn columns(&self) -> impl Iterator<Item = &str> {
        WIDE_COLUMNS
            .iter()
            .map(|(name, _)| *name)
            .chain(self.extra_columns.iter().map(String::as_str))
    }

    /// The seed's columns only.
    pub fn plain(name: impl Into<String>) -> WideTable {
        WideTable {
            name: name.into(),
            extra_columns: Vec::new(),
        }
    }
}

/// `INSERT … VALUES (…),… ON DUPLICATE KEY UPDATE` (MySQL) or `ON CONFLICT(id) DO UPDATE`
/// (SQLite) for `rows` rows.
pub fn upsert_sql(dialect: Dialect, table: &WideTable, rows: usize) -> String {
    let (head, tail) = upsert_clauses(dialect, table);
    let one = format!("({})", vec!["?"; table.columns().count()].join(","));
    let values = vec![one.as_str(); rows].join(",");
    format!("{head} {values} {tail}")
}

/// The parts of an upsert around its rows: `INSERT INTO t (…) VALUES` and the conflict clause.
pub fn upsert_clauses(dialect: Dialect, table: &WideTable) -> (String, String) {
    let columns: Vec<&str> = table.columns().collect();
    let updates: Vec<String> = columns[1..]
        .iter()
        .map(|c| match dialect {
            Dialect::Mysql => format!("{c}=VALUES({c})"),
            Dialect::Sqlite => format!("{c}=excluded.{c}"),
        })
        .collect();
    let conflict = match dialect {
        Dialect::Mysql => "ON DUPLICATE KEY UPDATE",
        Dialect::Sqlite => "ON CONFLICT(id) DO UPDATE SET",
    };
    (
        format!("INSERT INTO {} ({}) VALUES", table.name, columns.join(",")),
        format!("{conflict} {}", updates.join(",")),
    )
}

/// `DELETE FROM table WHERE id IN (?, …)` for `ids` ids.
pub fn delete_sql(table: &str, ids: usize) -> String {
    format!(
        "DELETE FROM {table} WHERE id IN ({})",
        vec!["?"; ids].join(",")
    )
}

/// The statement sizes that write `n` rows (or ids) at most `batch_rows` at a time: full
/// batches, then the rest as powers of two, largest first. A writer that prepares each size
/// once then prepares at most one size per bit of `batch_rows` and the full batch, however the
/// batches it is given vary; one statement per distinct rest would be prepared anew nearly every
/// time (the server answering each with the definition of every parameter).
pub fn statement_sizes(n: usize, batch_rows: usize) -> impl Iterator<Item = usize> {
    let batch_rows = batch_rows.max(1);
    let full = n / batch_rows;
    let rest = n % batch_rows;
    std::iter::repeat_n(batch_rows, full).chain(
        (0..usize::BITS)
            .rev()
            .map(|bit| 1usize << bit)
            .filter(move |size| rest & size != 0),
    )
}

/// `items` in the statements [`statement_sizes`] gives, in order.
pub fn statement_chunks<T>(items: &[T], batch_rows: usize) -> impl Iterator<Item = &[T]> {
    let mut rest = items;
    statement_sizes(items.len(), batch_rows).map(move |size| {
        let (chunk, after) = rest.split_at(size);
        rest = after;
        chunk
    })
}

/// `SELECT id` of the rows owned by one worker: `id mod peers = index`; negative ids, which
/// this engine never writes, belong to worker 0 so that reconcile removes them too.
pub fn owned_ids_sql(table: &str) -> String {
    format!("SELECT id FROM {table} WHERE (id >= 0 AND id % ? = ?) OR (id < 0 AND ? = 0)")
}

fn text<S: AsRef<str>>(value: &Option<S>) -> Param<'_> {
    value
        .as_ref()
        .map_or(Param::Null, |v| Param::Text(v.as_ref()))
}

fn time(seconds: Option<i64>) -> Param<'static> {
    seconds.map_or(Param::Null, Param::Time)
}

/// The parameters of `row`, in [`WIDE_COLUMNS`] order, then its lookup columns.
pub fn row_params(row: &WideRow, process_time: i64) -> impl Iterator<Item = Param<'_>> {
    seed_params(row, process_time)
        .into_iter()
        .chain(lookup_params(row))
}

/// The parameters of `rows`, row after row, each made a driver's value by `value`: the vector
/// is sized once (a statement of 1000 rows has some 19,000) and extended by a known count per
/// row, where a flattened iterator of [`row_params`] would push them one at a time.
pub fn rows_params<'r, V>(
    rows: &[&'r WideRow],
    process_time: i64,
    value: impl Fn(Param<'r>) -> V,
) -> Vec<V> {
    let per_row = WIDE_COLUMNS.len() + rows.first().map_or(0, |row| row.extra.len());
    let mut params = Vec::with_capacity(rows.len() * per_row);
    for &row in rows {
        params.extend(seed_params(row, process_time).map(&value));
        params.extend(lookup_params(row).map(&value));
    }
    params
}

/// The parameters of `row`'s seed columns, in [`WIDE_COLUMNS`] order.
fn seed_params(row: &WideRow, process_time: i64) -> [Param<'_>; WIDE_COLUMNS.len()] {
    [
        Param::Int(row.id as i64),
        Param::Text(&row.wrong_id),
        Param::Text(&row.user_id),
        text(&row.subject),
        text(&row.subject_name),
        Param::Text(&row.question_id),
        text(&row.question),
        text(&row.pattern_id),
        text(&row.pattern_name),
        text(&row.teach_type_id),
        text(&row.teach_type_name),
        time(Some(row.collect_time)),
        text(&row.fix_id),
        time(row.fix_time),
        row.fix_result.map_or(Param::Null, Param::Int),
        text(&row.fix_result_desc),
        Param::Text(&row.event_id),
        Param::Text(&row.event_type),
        time(Some(process_time)),
    ]
}

/// The parameters of `row`'s lookup columns, in the spec's order.
fn lookup_params(row: &WideRow) -> impl ExactSizeIterator<Item = Param<'_>> {
    row.extra.iter().map(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_params_are_each_rows_params_in_turn() {
        let row = |id: u64, extra: Vec<Option<String>>| WideRow {
            id,
            wrong_id: id.to_string().into(),
            user_id: "u".into(),
            subject: Some("math".into()),
            subject_name: None,
            question_id: "q".into(),
            question: Some("a longer question than an inline string holds".into()),
            pattern_id: None,
            pattern_name: Some("p".into()),
            teach_type_id: None,
            teach_type_name: None,
            collect_time: 1_700_000_000,
            fix_id: Some("f".into()),
            fix_time: Some(1_700_000_001),
            fix_result: Some(1),
            fix_result_desc: None,
            event_id: format!("e{id}").into(),
            event_type: "t".into(),
            extra,
        };
        for extra in [vec![], vec![Some("x".to_owned()), None]] {
            let rows: Vec<WideRow> = (1..=3).map(|id| row(id, extra.clone())).collect();
            let expected: Vec<Param<'_>> = rows.iter().flat_map(|r| row_params(r, 9)).collect();
            assert_eq!(expected.len(), 3 * (WIDE_COLUMNS.len() + extra.len()));
            let refs: Vec<&WideRow> = rows.iter().collect();
            assert_eq!(rows_params(&refs, 9, |p| p), expected);
        }
    }

    #[test]
    fn statements_have_one_placeholder_per_value() {
        let sql = upsert_sql(Dialect::Mysql, &WideTable::plain("t"), 3);
        assert_eq!(sql.matches('?').count(), 3 * WIDE_COLUMNS.len());
        assert!(sql.starts_with("INSERT INTO t (id,wrong_id,"));
        assert!(sql.contains("ON DUPLICATE KEY UPDATE wrong_id=VALUES(wrong_id)"));
        assert!(!sql.contains("id=VALUES(id)"));
        let sql = upsert_sql(Dialect::Sqlite, &WideTable::plain("t"), 1);
        assert!(sql.contains("ON CONFLICT(id) DO UPDATE SET wrong_id=excluded.wrong_id"));
        let extended = WideTable {
            name: "t".into(),
            extra_columns: vec!["difficulty".into()],
        };
        let sql = upsert_sql(Dialect::Mysql, &extended, 1);
        assert_eq!(sql.matches('?').count(), WIDE_COLUMNS.len() + 1);
        assert!(sql.contains(",process_time,difficulty)"));
        assert!(sql.ends_with("difficulty=VALUES(difficulty)"));
        assert_eq!(delete_sql("t", 2), "DELETE FROM t WHERE id IN (?,?)");
    }

    #[test]
    fn statement_sizes_cover_every_row_with_few_distinct_sizes() {
        for batch_rows in [1, 7, 1000, 3000] {
            let mut distinct = std::collections::BTreeSet::new();
            for n in (0..5 * batch_rows)
                .step_by(batch_rows / 7 + 1)
                .chain([batch_rows - 1])
            {
                let sizes: Vec<usize> = statement_sizes(n, batch_rows).collect();
                assert_eq!(sizes.iter().sum::<usize>(), n, "{n} of {batch_rows}");
                assert!(sizes.iter().all(|&s| s > 0 && s <= batch_rows), "{sizes:?}");
                assert!(sizes.windows(2).all(|w| w[0] >= w[1]), "{sizes:?}");
                distinct.extend(sizes);
            }
            let bits = (usize::BITS - batch_rows.leading_zeros()) as usize;
            assert!(distinct.len() <= bits + 1, "{batch_rows}: {distinct:?}");
        }
        assert_eq!(
            statement_sizes(2_999, 1000).collect::<Vec<_>>(),
            [1000, 1000, 512, 256, 128, 64, 32, 4, 2, 1]
        );
        let items: Vec<usize> = (0..2_999).collect();
        let chunks: Vec<&[usize]> = statement_chunks(&items, 1000).collect();
        assert_eq!(chunks.iter().map(|c| c.len()).max(), Some(1000));
        assert_eq!(chunks.concat(), items);
    }
}
