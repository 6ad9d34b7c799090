//! The one reader of configuration tables, for the core's sections and every backend's
//! `[storage.<name>]` alike: a TOML table with the source of each of its keys (a file, an
//! environment variable, a flag), deserialized into a serde struct, so an error names the key,
//! the value, where it came from and the rule, and never shows a secret.

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;

use super::ConfigError;
use crate::backend::{EnvKind, EnvVar};
use crate::registry::Env;
use crate::units;
use crate::values::REDACTED;

/// A table being read, with the source of each key that was set.
#[derive(Debug, Clone, Default)]
pub struct Layered {
    /// The table's own key (`server`, `storage.s3`); errors name `<prefix>.<key>`.
    prefix: String,
    table: toml::Table,
    /// Key (dotted below the table) → `file <path>`, `env NAME`, `flag --name`.
    origin: BTreeMap<String, String>,
}

impl Layered {
    /// `table`, every key of it from `source`.
    pub fn new(prefix: impl Into<String>, table: toml::Table, source: &str) -> Self {
        let mut origin = BTreeMap::new();
        record_leaves(&table, "", source, &mut origin);
        Self { prefix: prefix.into(), table, origin }
    }

    pub fn table(&self) -> &toml::Table {
        &self.table
    }

    /// Merges `table` over this one, its keys from `source`.
    pub fn merge(&mut self, table: toml::Table, source: &str) {
        record_leaves(&table, "", source, &mut self.origin);
        merge_into(&mut self.table, table);
    }

    /// Sets the value at dotted `key` (`server.port`), from `source`.
    pub fn set(&mut self, key: &str, value: toml::Value, source: &str) {
        let mut table = &mut self.table;
        let mut parts = key.split('.').peekable();
        while let Some(part) = parts.next() {
            if parts.peek().is_none() {
                table.insert(part.to_owned(), value);
                break;
            }
            let entry = table.entry(part).or_insert_with(|| toml::Value::Table(toml::Table::new()));
            if !entry.is_table() {
                *entry = toml::Value::Table(toml::Table::new());
            }
            let Some(inner) = entry.as_table_mut() else { return };
            table = inner;
        }
        self.origin.insert(key.to_owned(), source.to_owned());
    }

    /// Applies the variables of `vars` that are set in `env`, converted by their kind.
    pub fn apply_env<'a>(&mut self, vars: impl IntoIterator<Item = &'a EnvVar>, env: &Env) -> Result<(), ConfigError> {
        for var in vars {
            let Some(text) = env.get(var.name) else { continue };
            let source = format!("env {}", var.name);
            let value = match var.kind {
                EnvKind::Text => toml::Value::String(text.to_owned()),
                EnvKind::Bool => toml::Value::Boolean(units::parse_bool(text).ok_or_else(|| {
                    self.invalid_from(
                        var.key,
                        &source,
                        Some(format!("{text:?}")),
                        "must be true/false, t/f, 1/0 or yes/no",
                    )
                })?),
                EnvKind::Integer => toml::Value::Integer(text.trim().parse().map_err(|_| {
                    self.invalid_from(var.key, &source, Some(format!("{text:?}")), "must be an integer")
                })?),
            };
            self.set(var.key, value, &source);
        }
        Ok(())
    }

    /// Takes the sub-table `name` off as a table of its own (empty when absent).
    pub fn take(&mut self, name: &str) -> Result<Layered, ConfigError> {
        let prefix = if self.prefix.is_empty() { name.to_owned() } else { format!("{}.{name}", self.prefix) };
        let table = match self.table.remove(name) {
            None => toml::Table::new(),
            Some(toml::Value::Table(t)) => t,
            Some(other) => {
                return Err(self.invalid(name, Some(format!("{:?}", shown(&other))), "must be a table"));
            }
        };
        let below = format!("{name}.");
        let origin =
            self.origin.iter().filter_map(|(k, v)| Some((k.strip_prefix(&below)?.to_owned(), v.clone()))).collect();
        Ok(Layered { prefix, table, origin })
    }

    /// Where the value of `key` came from: its source, or `default`.
    pub fn source(&self, key: &str) -> String {
        let field = key.split('[').next().unwrap_or_default();
        self.origin.get(field).cloned().unwrap_or_else(|| {
            let top = field.split('.').next().unwrap_or_default();
            // A key below one set as a whole (an array entry, a table in a file).
            self.origin.get(top).cloned().unwrap_or_else(|| "default".to_owned())
        })
    }

    /// The error for `key` (below this table). `shown`: the value as written, `None` for a secret.
    pub fn invalid(&self, key: &str, shown: Option<String>, rule: impl Into<String>) -> ConfigError {
        self.invalid_from(key, &self.source(key), shown, rule)
    }

    fn invalid_from(&self, key: &str, source: &str, shown: Option<String>, rule: impl Into<String>) -> ConfigError {
        let value = format!("{} (from {source})", shown.as_deref().unwrap_or(REDACTED));
        ConfigError::Invalid { key: self.full_key(key), value, rule: rule.into() }
    }

    fn full_key(&self, key: &str) -> String {
        if self.prefix.is_empty() { key.to_owned() } else { format!("{}.{key}", self.prefix) }
    }

    /// Refuses a key that is not one of `known` (the core's sections; a backend's unknown key is
    /// refused by its `deny_unknown_fields`), naming the known ones.
    pub fn reject_unknown(&self, known: &[&str]) -> Result<(), ConfigError> {
        match self.table.keys().find(|k| !known.contains(&k.as_str())) {
            None => Ok(()),
            Some(key) => Err(ConfigError::UnknownKey {
                key: self.full_key(key),
                source_name: self.source(key),
                table: self.prefix.clone(),
                known: known.join(", "),
            }),
        }
    }

    /// The error for `key`, whose `value` breaks `rule`. A scalar is shown; a table or an array
    /// is named, never shown (it may hold a secret).
    pub fn invalid_value(&self, key: &str, value: &toml::Value, rule: impl Into<String>) -> ConfigError {
        self.invalid(key, Some(shown(value)), rule)
    }

    /// The table as a `T`; a value `T` refuses is named with its key, its source and the rule.
    pub fn read<T: DeserializeOwned>(&self) -> Result<T, ConfigError> {
        serde_path_to_error::deserialize(toml::Value::Table(self.table.clone()))
            .map_err(|e| self.not_deserialized::<T>(&e))
    }

    /// A value that did not deserialize. Its key is named when it is one of the table's (not for
    /// an unknown key, whose error names it). A scalar is shown: a [`Secret`](crate::values::Secret)
    /// accepts every scalar, so a value that failed is never one.
    fn not_deserialized<T: DeserializeOwned>(&self, e: &serde_path_to_error::Error<toml::de::Error>) -> ConfigError {
        let path = e.path().to_string();
        let field = path.split(['.', '[']).next().unwrap_or_default();
        let rule = e.inner().message().trim().to_owned();
        match self.table.get(field).filter(|_| field_names::<T>().contains(&field)) {
            Some(value) => self.invalid_value(&path, value, rule),
            // The error is the table's (an unknown key, perhaps a misspelt secret): name the
            // keys, never their values.
            None => ConfigError::Invalid {
                key: self.prefix.clone(),
                value: format!("a table with the keys [{}]", self.table.keys().cloned().collect::<Vec<_>>().join(", ")),
                rule,
            },
        }
    }
}

/// A value as an error shows it: a string quoted, a number or boolean as written; never the
/// contents of a table or an array (which may hold a secret).
fn shown(value: &toml::Value) -> String {
    match value {
        toml::Value::Table(_) => "a table".to_owned(),
        toml::Value::Array(_) => "an array".to_owned(),
        toml::Value::String(s) => format!("{s:?}"),
        scalar => scalar.to_string(),
    }
}

/// Records `source` for every key of `table`, tables of tables by their dotted keys.
fn record_leaves(table: &toml::Table, prefix: &str, source: &str, origin: &mut BTreeMap<String, String>) {
    for (key, value) in table {
        let path = format!("{prefix}{key}");
        if let toml::Value::Table(inner) = value {
            record_leaves(inner, &format!("{path}."), source, origin);
        } else {
            origin.insert(path, source.to_owned());
        }
    }
}

fn merge_into(base: &mut toml::Table, over: toml::Table) {
    for (key, value) in over {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge_into(b, o),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

/// The keys a settings struct has, as its `Deserialize` declares them: asked of a deserializer
/// that only records them.
pub(crate) fn field_names<T: DeserializeOwned>() -> &'static [&'static str] {
    use serde::de::{self, Deserializer, Visitor};

    struct Probe<'a>(&'a mut &'static [&'static str]);

    impl<'de> Deserializer<'de> for Probe<'_> {
        type Error = de::value::Error;

        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
            Err(de::Error::custom("not a struct"))
        }

        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Self::Error> {
            *self.0 = fields;
            Err(de::Error::custom("probed"))
        }

        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf option unit
            unit_struct newtype_struct seq tuple tuple_struct map enum identifier ignored_any
        }
    }

    let mut fields: &'static [&'static str] = &[];
    let _ = T::deserialize(Probe(&mut fields));
    fields
}
