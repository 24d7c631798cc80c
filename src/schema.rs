//! The seed's tables: the wide table's columns and their limits, and the DDL `init-db` runs for
//! MySQL/MariaDB and for SQLite.
//!
//! The column limits are what make "never truncate" enforceable: a value longer than its column
//! is rejected when the event is processed, before it can reach the database.

/// The SQL dialect of a database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Mysql,
    Sqlite,
}

/// The type of a wide-table column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnType {
    BigInt,
    /// VARCHAR(n): at most n characters.
    Varchar(usize),
    /// TEXT: at most 65,535 bytes.
    Text,
    Timestamp,
}

/// The wide table `dwd_wrong_record_wide_delta`, in the seed's column order.
pub const WIDE_COLUMNS: [(&str, ColumnType); 19] = [
    ("id", ColumnType::BigInt),
    ("wrong_id", ColumnType::Varchar(50)),
    ("user_id", ColumnType::Varchar(50)),
    ("subject", ColumnType::Varchar(20)),
    ("subject_name", ColumnType::Varchar(50)),
    ("question_id", ColumnType::Varchar(50)),
    ("question", ColumnType::Text),
    ("pattern_id", ColumnType::Varchar(50)),
    ("pattern_name", ColumnType::Varchar(100)),
    ("teach_type_id", ColumnType::Varchar(50)),
    ("teach_type_name", ColumnType::Varchar(100)),
    ("collect_time", ColumnType::Timestamp),
    ("fix_id", ColumnType::Varchar(50)),
    ("fix_time", ColumnType::Timestamp),
    ("fix_result", ColumnType::BigInt),
    ("fix_result_desc", ColumnType::Varchar(50)),
    ("event_id", ColumnType::Varchar(100)),
    ("event_type", ColumnType::Varchar(50)),
    ("process_time", ColumnType::Timestamp),
];

/// The fewest characters a text column of [`WIDE_COLUMNS`] holds: a value of at most this many
/// bytes fits any of them.
const SHORTEST_TEXT_COLUMN: usize = 20;

/// The smallest and largest seconds since the epoch a MySQL TIMESTAMP holds
/// (1970-01-01 00:00:01 to 2038-01-19 03:14:07 UTC).
pub const TIMESTAMP_RANGE: std::ops::RangeInclusive<i64> = 1..=2_147_483_647;

/// Whether `value` fits wide-table column `column`; `Err` says why not.
///
/// Inlined for its fast path: most values are shorter than every text column, and the call
/// cost more than that test (some five per event).
#[inline]
pub fn check_fits(column: &str, value: &str) -> Result<(), String> {
    if value.len() <= SHORTEST_TEXT_COLUMN {
        return Ok(());
    }
    check_long_value_fits(column, value)
}

/// [`check_fits`] for a value longer than the shortest text column.
#[inline(never)]
fn check_long_value_fits(column: &str, value: &str) -> Result<(), String> {
    let (_, ty) = WIDE_COLUMNS
        .iter()
        .find(|(name, _)| *name == column)
        .expect("check_fits is called with wide-table column names");
    match *ty {
        // A character is at least a byte: a value no longer in bytes fits.
        ColumnType::Varchar(max) if value.len() <= max => {}
        ColumnType::Varchar(max) => {
            // Counting stops one past the limit: a huge value costs no more than a small one.
            let chars = value.chars().take(max + 1).count();
            if chars > max {
                return Err(format!(
                    "`{column}` holds at most {max} characters; the value has {}",
                    value.chars().count()
                ));
            }
        }
        ColumnType::Text if value.len() > 65_535 => {
            return Err(format!(
                "`{column}` holds at most 65535 bytes; the value has {}",
                value.len()
            ));
        }
        _ => {}
    }
    Ok(())
}

/// DDL for the wide table `table`, created when missing.
pub fn wide_table_ddl(dialect: Dialect, table: &str) -> String {
    let columns: Vec<String> = WIDE_COLUMNS
        .iter()
        .map(|(name, ty)| {
            let ty = match (ty, dialect) {
                (ColumnType::BigInt, _) if *name == "id" => "BIGINT PRIMARY KEY".to_owned(),
                (ColumnType::BigInt, _) => "BIGINT".to_owned(),
                (ColumnType::Varchar(n), _) => format!("VARCHAR({n})"),
                (ColumnType::Text, _) => "TEXT".to_owned(),
                (ColumnType::Timestamp, Dialect::Mysql) => "TIMESTAMP NULL".to_owned(),
                (ColumnType::Timestamp, Dialect::Sqlite) => "TIMESTAMP".to_owned(),
            };
            format!("    {name} {ty}")
        })
        .collect();
    format!(
        "CREATE TABLE IF NOT EXISTS {table} (\n{}\n){};\n",
        columns.join(",\n"),
        table_options(dialect)
    )
}

/// DDL for the three dimension tables and the routing table (the seed's, created when missing).
pub fn source_tables_ddl(dialect: Dialect, routing_table: &str) -> String {
    let dims = "\
CREATE TABLE IF NOT EXISTS tower_pattern (
    id VARCHAR(50) PRIMARY KEY,
    name VARCHAR(100),
    type INT,
    subject VARCHAR(20),
    difficulty DECIMAL(5,3),
    modify_time TIMESTAMP NULL
);
CREATE TABLE IF NOT EXISTS tower_teaching_type_pt (
    id BIGINT PRIMARY KEY,
    teaching_type_id BIGINT,
    pt_id VARCHAR(50),
    order_num INT,
    is_delete TINYINT,
    modify_time TIMESTAMP NULL
);
CREATE TABLE IF NOT EXISTS tower_teaching_type (
    id BIGINT PRIMARY KEY,
    chapter_id VARCHAR(50),
    teaching_type_name VARCHAR(100),
    is_delete TINYINT,
    modify_time TIMESTAMP NULL
);
";
    let routing = match dialect {
        Dialect::Mysql => format!(
            "CREATE TABLE IF NOT EXISTS {routing_table} (
    id BIGINT PRIMARY KEY AUTO_INCREMENT,
    event_type VARCHAR(100),
    processor_class VARCHAR(200),
    enabled TINYINT DEFAULT 1,
    hot_deployable TINYINT DEFAULT 1,
    priority INT DEFAULT 100,
    version VARCHAR(20),
    create_time TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    update_time TIMESTAMP DEFAULT CURRENT_TIMESTAMP ON UPDATE CURRENT_TIMESTAMP
);
"
        ),
        Dialect::Sqlite => format!(
            "CREATE TABLE IF NOT EXISTS {routing_table} (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    event_type VARCHAR(100),
    processor_class VARCHAR(200),
    enabled TINYINT DEFAULT 1,
    hot_deployable TINYINT DEFAULT 1,
    priority INT DEFAULT 100,
    version VARCHAR(20),
    create_time TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    update_time TIMESTAMP DEFAULT CURRENT_TIMESTAMP
);
"
        ),
    };
    format!("{dims}{routing}").replace(");\n", &format!("){};\n", table_options(dialect)))
}

/// Table options: on MySQL, utf8mb4 whatever the server's default (names are Chinese).
fn table_options(dialect: Dialect) -> &'static str {
    match dialect {
        Dialect::Mysql => " DEFAULT CHARSET=utf8mb4",
        Dialect::Sqlite => "",
    }
}

/// Formats seconds since the epoch as `YYYY-MM-DD HH:MM:SS` (UTC), the TIMESTAMP text form.
pub fn format_timestamp(seconds: i64) -> String {
    let t = civil_time(seconds);
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
        t.year, t.month, t.day, t.hour, t.minute, t.second
    )
}

/// A moment as a UTC calendar date and time of day.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CivilTime {
    pub year: i64,
    pub month: u8,
    pub day: u8,
    pub hour: u8,
    pub minute: u8,
    pub second: u8,
}

/// `seconds` since the epoch as a UTC calendar date and time of day.
pub fn civil_time(seconds: i64) -> CivilTime {
    let days = seconds.div_euclid(86_400);
    let secs = seconds.rem_euclid(86_400);
    // Civil-from-days (H. Hinnant), valid for the whole i64 day range we can meet.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    // Each is within its calendar range by construction.
    CivilTime {
        year,
        month: month as u8,
        day: day as u8,
        hour: (secs / 3600) as u8,
        minute: (secs % 3600 / 60) as u8,
        second: (secs % 60) as u8,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_text_column_is_shorter_than_the_fast_path_assumes() {
        for (column, ty) in WIDE_COLUMNS {
            if let ColumnType::Varchar(max) = ty {
                assert!(max >= SHORTEST_TEXT_COLUMN, "{column}");
            }
        }
        assert!(check_fits("subject", &"x".repeat(21)).is_err());
    }

    #[test]
    fn timestamps_format_as_utc_text() {
        assert_eq!(format_timestamp(0), "1970-01-01 00:00:00");
        assert_eq!(format_timestamp(1_640_995_200), "2022-01-01 00:00:00");
        assert_eq!(format_timestamp(951_782_400), "2000-02-29 00:00:00");
        assert_eq!(format_timestamp(2_147_483_647), "2038-01-19 03:14:07");
        assert_eq!(format_timestamp(1_700_000_123), "2023-11-14 22:15:23");
        assert_eq!(
            civil_time(2_147_483_647),
            CivilTime {
                year: 2038,
                month: 1,
                day: 19,
                hour: 3,
                minute: 14,
                second: 7
            }
        );
    }

    #[test]
    fn limits_count_characters_not_bytes() {
        assert!(check_fits("wrong_id", &"错".repeat(50)).is_ok());
        assert!(check_fits("wrong_id", &"错".repeat(51)).is_err());
        assert!(check_fits("question", &"a".repeat(65_535)).is_ok());
        assert!(check_fits("question", &"错".repeat(30_000)).is_err());
    }
}
