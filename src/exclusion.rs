//! Excluded columns (`exclude_columns`), remembered by table oid and attribute number.
//!
//! The config names columns; names change. A column is excluded when its table's current
//! name and its own name are in the config, and from then on by number, whatever it and its
//! table are renamed to. The source keeps each one in `excluded_column` with every name it
//! has had, since row images queued before a rename carry the old name. A column that
//! takes a name an excluded column of its table has had is excluded too, so the rule by
//! name (the transmitter's) and the rule by number (the watcher's) agree. Generated columns
//! computed from an excluded one are excluded with it.

use std::collections::{BTreeMap, BTreeSet};

use ddlwatcher::{Catalog, Column, Table};
use tokio_postgres::GenericClient;

/// The columns excluded from one target.
#[derive(Debug, Clone, Default)]
pub struct Exclusions {
    /// `exclude_columns` of the target: `schema.table` → column names.
    configured: BTreeMap<String, Vec<String>>,
    /// Table oid → attribute number → every name the column has had.
    tables: BTreeMap<u32, BTreeMap<i16, BTreeSet<String>>>,
}

impl Exclusions {
    /// The exclusions recorded for `target` in the source's internal `schema` (quoted).
    pub async fn read(
        client: &impl GenericClient,
        schema: &str,
        target: &str,
        configured: &BTreeMap<String, Vec<String>>,
    ) -> Result<Self, tokio_postgres::Error> {
        let rows = client
            .query(
                &format!(
                    "select relid, attnum, names from {schema}.excluded_column where target = $1"
                ),
                &[&target],
            )
            .await?;
        let mut tables: BTreeMap<u32, BTreeMap<i16, BTreeSet<String>>> = BTreeMap::new();
        for r in rows {
            let names: Vec<String> = r.get(2);
            tables
                .entry(r.get(0))
                .or_default()
                .insert(r.get(1), names.into_iter().collect());
        }
        Ok(Self {
            configured: configured.clone(),
            tables,
        })
    }

    /// Reads the exclusions of `target`, takes in what `catalog` shows (columns excluded
    /// by name, new names of excluded ones) and records it; forgets tables that no longer
    /// exist. Run in the transaction that uses the result.
    pub async fn record(
        client: &impl GenericClient,
        schema: &str,
        target: &str,
        configured: &BTreeMap<String, Vec<String>>,
        catalog: &Catalog,
    ) -> Result<Self, tokio_postgres::Error> {
        let mut me = Self::read(client, schema, target, configured).await?;
        let changed = me.observe(catalog);
        for (relid, attnum) in changed {
            let names: Vec<String> = me.tables[&relid][&attnum].iter().cloned().collect();
            client
                .execute(
                    &format!(
                        "insert into {schema}.excluded_column (target, relid, attnum, names) values ($1, $2, $3, $4)
                         on conflict (target, relid, attnum) do update set names = excluded.names"
                    ),
                    &[&target, &relid, &attnum, &names],
                )
                .await?;
        }
        client
            .execute(
                &format!(
                    "delete from {schema}.excluded_column e
                      where e.target = $1 and not exists (select 1 from pg_catalog.pg_class c where c.oid = e.relid)"
                ),
                &[&target],
            )
            .await?;
        Ok(me)
    }

    /// The configured (`schema.table`, column) pairs whose table is in `catalog` but that
    /// name no column of it, now or before (no excluded column of it had that name).
    pub fn unmatched(&self, catalog: &Catalog) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for t in &catalog.tables {
            let id = format!("{}.{}", t.schema, t.name);
            let Some(cols) = self.configured.get(&id) else {
                continue;
            };
            let known = self.tables.get(&t.oid);
            for c in cols {
                let current = t.columns.iter().any(|x| &x.name == c);
                let before = known.is_some_and(|k| k.values().any(|names| names.contains(c)));
                if !current && !before {
                    out.push((id.clone(), c.clone()));
                }
            }
        }
        out
    }

    /// Whether column `c` of `t` is excluded (see the module's rule; generated columns
    /// computed from excluded ones are decided by [`Self::strip_table`]).
    fn excludes(&self, t: &Table, c: &Column) -> bool {
        let known = self.tables.get(&t.oid);
        known.is_some_and(|cols| {
            cols.contains_key(&c.attnum) || cols.values().any(|names| names.contains(&c.name))
        }) || self
            .configured
            .get(&format!("{}.{}", t.schema, t.name))
            .is_some_and(|cols| cols.contains(&c.name))
    }

    /// Takes in the excluded columns of `catalog` under their current names; returns the
    /// (table oid, attribute number) entries that are new or got a new name.
    fn observe(&mut self, catalog: &Catalog) -> Vec<(u32, i16)> {
        let mut changed = Vec::new();
        for t in &catalog.tables {
            let mut left = t.clone();
            for c in self.strip_table(&mut left) {
                let names = self
                    .tables
                    .entry(t.oid)
                    .or_default()
                    .entry(c.attnum)
                    .or_default();
                if names.insert(c.name.clone()) {
                    changed.push((t.oid, c.attnum));
                }
            }
        }
        changed
    }

    /// Removes the excluded columns from `t` (with what derives from them: generated
    /// columns, indexes, constraints); returns the columns removed.
    pub fn strip_table(&self, t: &mut Table) -> Vec<Column> {
        let attnums: BTreeSet<i16> = t
            .columns
            .iter()
            .filter(|c| self.excludes(t, c))
            .map(|c| c.attnum)
            .collect();
        t.remove_columns(&attnums)
    }

    /// `catalog` without the excluded columns; views that mention one of them by name are
    /// left out too (created on the target, they would fail for want of it).
    pub fn strip(&self, catalog: &Catalog) -> Catalog {
        let mut out = catalog.clone();
        let mut gone: BTreeSet<String> = BTreeSet::new();
        for t in &mut out.tables {
            gone.extend(self.strip_table(t).into_iter().map(|c| c.name));
        }
        out.views
            .retain(|v| !gone.iter().any(|n| ddlwatcher::mentions(&v.definition, n)));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ddlwatcher::TypeRef;

    fn col(attnum: i16, name: &str) -> Column {
        Column {
            attnum,
            name: name.into(),
            type_name: "text".into(),
            type_ref: TypeRef::Builtin("text".into()),
            not_null: false,
            generated: false,
            expression: None,
            identity: None,
            sequence: None,
            text_form: false,
            collation: None,
        }
    }

    fn table(oid: u32, name: &str, cols: &[(i16, &str)]) -> Table {
        Table {
            oid,
            schema: "app".into(),
            name: name.into(),
            columns: cols.iter().map(|(n, c)| col(*n, c)).collect(),
            primary_key: Some(vec!["id".into()]),
            unique_key: None,
            primary_key_deferrable: None,
            primary_key_name: None,
            indexes: vec![],
            constraints: vec![],
            partitions: vec![],
        }
    }

    fn catalog(tables: Vec<Table>) -> Catalog {
        Catalog {
            tables,
            ..Default::default()
        }
    }

    fn names(c: &Catalog) -> Vec<String> {
        c.tables[0].columns.iter().map(|c| c.name.clone()).collect()
    }

    #[test]
    fn an_excluded_column_stays_excluded_through_renames() {
        let configured = [("app.p".to_string(), vec!["secret".to_string()])].into();
        let mut x = Exclusions {
            configured,
            tables: BTreeMap::new(),
        };
        let before = catalog(vec![table(7, "p", &[(1, "id"), (2, "secret"), (3, "n")])]);
        assert_eq!(x.observe(&before), vec![(7, 2)]);
        assert!(x.observe(&before).is_empty(), "nothing new the second time");
        // Column and table renamed: still excluded, by number; the new name is learnt.
        let after = catalog(vec![table(7, "q", &[(1, "id"), (2, "secret2"), (3, "n")])]);
        assert_eq!(x.observe(&after), vec![(7, 2)]);
        assert_eq!(names(&x.strip(&after)), ["id", "n"]);
        assert_eq!(
            x.tables[&7][&2].iter().collect::<Vec<_>>(),
            ["secret", "secret2"]
        );
        // A new column under a name an excluded one had is excluded too.
        let again = catalog(vec![table(
            7,
            "q",
            &[(1, "id"), (2, "secret2"), (3, "n"), (4, "secret")],
        )]);
        assert_eq!(x.observe(&again), vec![(7, 4)]);
        assert_eq!(names(&x.strip(&again)), ["id", "n"]);
        // Every configured name fits a column now or before; a wrong one is reported.
        assert!(x.unmatched(&again).is_empty());
        x.configured
            .insert("app.q".into(), vec!["nope".into(), "n".into()]);
        assert_eq!(
            x.unmatched(&again),
            [("app.q".to_string(), "nope".to_string())]
        );
        // Another table with the same column names is untouched.
        let other = catalog(vec![table(8, "r", &[(1, "id"), (2, "secret")])]);
        assert!(x.observe(&other).is_empty());
        assert_eq!(names(&x.strip(&other)), ["id", "secret"]);
    }
}
