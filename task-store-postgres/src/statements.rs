//! The SQL text of every operation, made once per store for its schema.
//! Each is a single statement (prepared once per connection), so each
//! operation is one round trip and one transaction.

use crate::schema::in_schema;

/// Creates a batch of fresh threads, each with its messages as its first
/// log entries (in its row). Items whose id is taken are skipped (`ON
/// CONFLICT DO NOTHING`); the ids that were created come back. Rows are
/// inserted in id order, so that concurrent batches wait for one another's
/// ids in one order and cannot deadlock.
const CREATE_BATCH: &str = "\
INSERT INTO {s}.threads (id, kind, parent_id, metadata, state, version, last_seq, terminal,
                         expires_at, first_count, first_ids, first_log)
SELECT id, kind, parent_id, metadata, state, 1, last_seq, terminal,
       {s}.expiry(terminal, $8::bigint), last_seq, first_ids, first_log
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::boolean[],
            $7::bigint[], $9::text[], $10::text[])
    AS t (id, kind, parent_id, metadata, state, terminal, last_seq, first_ids, first_log)
ORDER BY id
ON CONFLICT (id) DO NOTHING
RETURNING id";

const APPEND_BATCH: &str = "\
SELECT r_outcome, r_version, r_last_seq, r_appended
FROM {s}.append_batch($1::text[], $2::bigint[], $3::text[], $4::boolean[], $5::integer[],
                      $6::text[], $7::text[], $8::bigint)";

const SAVE: &str = "\
SELECT r_version, r_last_seq, r_appended
FROM {s}.save_thread($1::text, $2::text, $3::text, $4::text, $5::text, $6::boolean,
                     $7::text[], $8::text[], $9::bigint)";

const DELETE: &str = "SELECT {s}.delete_thread($1::text)";

const LOAD: &str = "\
SELECT kind, parent_id, metadata, state, version, last_seq, terminal
FROM {s}.threads WHERE id = $1";

/// The thread's last sequence number, its first log entries (only while
/// the cursor is before their end), and a page of the rest of its log: no
/// row when there is no such thread, one row with `NULL`s for an empty
/// page of the rest.
const LOAD_MESSAGES: &str = "\
SELECT t.last_seq, m.seq, m.message_id, m.body, t.first_count,
       CASE WHEN $2 < t.first_count THEN t.first_ids END,
       CASE WHEN $2 < t.first_count THEN t.first_log END
FROM {s}.threads t
LEFT JOIN LATERAL (
    SELECT x.seq, x.message_id, x.body FROM {s}.messages x
    WHERE x.thread_id = t.id AND x.seq > $2 ORDER BY x.seq LIMIT $3
) m ON true
WHERE t.id = $1
ORDER BY m.seq";

const SWEEP: &str = "SELECT {s}.sweep_expired($1::integer)";

/// The SQL of one store, in its schema.
#[derive(Debug)]
pub(crate) struct Statements {
    pub(crate) create_batch: String,
    pub(crate) append_batch: String,
    pub(crate) save: String,
    pub(crate) delete: String,
    pub(crate) load: String,
    pub(crate) load_messages: String,
    pub(crate) sweep: String,
    /// `list_threads` by filter: index `parent | kind << 1 | open << 2`.
    lists: Vec<String>,
}

impl Statements {
    pub(crate) fn new(schema: &str) -> Self {
        let lists = (0..8)
            .map(|bits| list_sql(schema, bits & 1 != 0, bits & 2 != 0, bits & 4 != 0))
            .collect();
        Self {
            create_batch: in_schema(CREATE_BATCH, schema),
            append_batch: in_schema(APPEND_BATCH, schema),
            save: in_schema(SAVE, schema),
            delete: in_schema(DELETE, schema),
            load: in_schema(LOAD, schema),
            load_messages: in_schema(LOAD_MESSAGES, schema),
            sweep: in_schema(SWEEP, schema),
            lists,
        }
    }

    /// The listing for these filters. Its parameters are the cursor (`''`
    /// for the start), then the parent and the kind if filtered on, then
    /// the row limit.
    pub(crate) fn list(&self, parent: bool, kind: bool, open: bool) -> &str {
        &self.lists[usize::from(parent) | usize::from(kind) << 1 | usize::from(open) << 2]
    }
}

/// One listing query. `NOT terminal` is written out, not a parameter, so
/// the planner matches it to the partial indexes of open threads.
fn list_sql(schema: &str, parent: bool, kind: bool, open: bool) -> String {
    let mut sql = String::from("SELECT id FROM {s}.threads WHERE id > $1");
    let mut next = 2;
    if parent {
        sql.push_str(&format!(" AND parent_id = ${next}"));
        next += 1;
    }
    if kind {
        sql.push_str(&format!(" AND kind = ${next}"));
        next += 1;
    }
    if open {
        sql.push_str(" AND NOT terminal");
    }
    sql.push_str(&format!(" ORDER BY id LIMIT ${next}"));
    in_schema(&sql, schema)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listings_number_their_parameters_and_name_the_open_filter() {
        let statements = Statements::new("s");
        assert_eq!(
            statements.list(true, true, true),
            "SELECT id FROM \"s\".threads WHERE id > $1 AND parent_id = $2 AND kind = $3 \
             AND NOT terminal ORDER BY id LIMIT $4"
        );
        assert_eq!(
            statements.list(false, true, false),
            "SELECT id FROM \"s\".threads WHERE id > $1 AND kind = $2 ORDER BY id LIMIT $3"
        );
        assert_eq!(
            statements.list(false, false, false),
            "SELECT id FROM \"s\".threads WHERE id > $1 ORDER BY id LIMIT $2"
        );
    }
}
