//! How a configuration section is declared: each key once, with its type, its value rule
//! ([`Codec`]), its default, its environment variable and command-line flag if any, and its doc
//! comment. From that one declaration `section!` makes the struct, its `Default`, its reading
//! from a [`Layered`] table (each key by its codec, so an error names the key, its value, its
//! source and the codec's rule), its serialisation (`--print-config`) and the [`Key`]s the
//! environment, the flags and the reference (`docs/configuration.md`) come from.
//!
//! The sections are read and printed key by key rather than through a derived serde
//! implementation: the codecs already work on TOML values, and one generic path for every
//! section keeps the release binary about 0.25 MB smaller than serde visitors per section read
//! through `serde_path_to_error` and printed through the TOML serializer (measured 2026-12-06).

use super::ConfigError;
use super::reader::Layered;

/// How a key's value is read from TOML (a file's native value, or the text of an environment
/// variable or a flag) and written back.
pub trait Codec {
    type Value;
    /// What the reference says the value is (`integer, 1 to 65535`).
    fn describe() -> String;
    /// The flag's placeholder in `--help`.
    fn placeholder() -> &'static str;
    /// The value, or the rule it breaks.
    fn decode(value: toml::Value) -> Result<Self::Value, String>;
    /// The value as printed; `None` when absent (an unset optional key).
    fn encode(value: &Self::Value) -> Option<toml::Value>;
}

/// One key as the declaration states it: what the environment, the flags and the reference are
/// made from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key {
    /// The table (`server`).
    pub section: &'static str,
    /// The key within it (`port`).
    pub name: &'static str,
    /// `section.name`.
    pub path: &'static str,
    /// The doc comment.
    pub doc: &'static str,
    pub env: Option<&'static str>,
    /// The long flag, without its dashes.
    pub flag: Option<&'static str>,
    /// What the value is ([`Codec::describe`]).
    pub kind: String,
    /// The flag's placeholder ([`Codec::placeholder`]).
    pub placeholder: &'static str,
    /// The default, as Markdown (a value in code font, or words); `None`: unset.
    pub default: Option<String>,
}

/// A section of the configuration file.
pub trait Section {
    /// The table's name.
    const NAME: &'static str;
    /// The section's doc comment.
    const DOC: &'static str;
    /// The keys' names, in declaration order.
    const FIELDS: &'static [&'static str];
    fn keys() -> Vec<Key>;
    /// The section from `table`: unknown keys refused (naming the known ones), each set key
    /// decoded by its codec, defaults for the others.
    fn read(table: &Layered) -> Result<Self, ConfigError>
    where
        Self: Sized;
    /// The keys as printed, in declaration order; an unset optional key is left out.
    fn entries(&self) -> Vec<(&'static str, toml::Value)>;
}

/// The value of `key` in `table` read by codec `C`; `None` when the key is not set.
pub fn decode<C: Codec>(table: &Layered, key: &str) -> Result<Option<C::Value>, ConfigError> {
    match table.table().get(key) {
        None => Ok(None),
        Some(value) => C::decode(value.clone()).map(Some).map_err(|rule| table.invalid_value(key, value, rule)),
    }
}

/// The default as the reference shows it.
pub fn shown_default<C: Codec>(value: &C::Value) -> Option<String> {
    Some(match C::encode(value)? {
        toml::Value::String(s) => s,
        toml::Value::Array(items) => {
            items.iter().map(|i| i.as_str().map_or_else(|| i.to_string(), str::to_owned)).collect::<Vec<_>>().join(", ")
        }
        other => other.to_string(),
    })
}

/// Declares a section (see the module documentation). Each key reads
///
/// ```text
/// /// Doc comment.
/// name: FieldType as Codec = default [, env "NAME"] [, flag "long-flag"] [, shown "the default in words"];
/// ```
///
/// A default may use the keys declared above it in the same section (as local variables).
macro_rules! section {
    (
        $(#[doc = $sdoc:literal])*
        pub struct $name:ident in $section:literal {
            $(
                $(#[doc = $doc:literal])*
                $field:ident : $ty:ty as $codec:ty = $default:expr
                    $(, env $env:literal)?
                    $(, flag $flag:literal)?
                    $(, shown $shown:literal)?
                ;
            )*
        }
    ) => {
        $(#[doc = $sdoc])*
        #[derive(Debug, Clone, PartialEq)]
        pub struct $name {
            $($(#[doc = $doc])* pub $field: $ty,)*
        }

        /// Each key's dotted name (`section.key`), for messages that name it: the name is written
        /// here once, not again in every message.
        #[allow(non_upper_case_globals)]
        impl $name {
            $(pub const $field: &'static str = concat!($section, ".", stringify!($field));)*
        }

        impl $name {
            /// The section from the keys that were set, defaults for the others.
            #[allow(clippy::too_many_arguments)]
            fn assemble($($field: Option<$ty>),*) -> Self {
                $(let $field = match $field { Some(value) => value, None => $default };)*
                Self { $($field),* }
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::assemble($(Option::<$ty>::None),*)
            }
        }

        impl $crate::config::declare::Section for $name {
            const NAME: &'static str = $section;
            const DOC: &'static str = concat!($($sdoc, "\n"),*);
            const FIELDS: &'static [&'static str] = &[$(stringify!($field)),*];
            fn read(table: &$crate::config::reader::Layered) -> Result<Self, $crate::config::ConfigError> {
                table.reject_unknown(Self::FIELDS)?;
                Ok(Self::assemble($($crate::config::declare::decode::<$codec>(table, stringify!($field))?),*))
            }
            fn entries(&self) -> Vec<(&'static str, toml::Value)> {
                use $crate::config::declare::Codec as _;
                let mut entries = Vec::new();
                $(if let Some(value) = <$codec>::encode(&self.$field) {
                    entries.push((stringify!($field), value));
                })*
                entries
            }
            fn keys() -> Vec<$crate::config::declare::Key> {
                use $crate::config::declare::Codec as _;
                let defaults = <Self as Default>::default();
                vec![$($crate::config::declare::Key {
                    section: $section,
                    name: stringify!($field),
                    path: concat!($section, ".", stringify!($field)),
                    doc: concat!($($doc, "\n"),*),
                    env: None $(.or(Some($env)))?,
                    flag: None $(.or(Some($flag)))?,
                    kind: <$codec>::describe(),
                    placeholder: <$codec>::placeholder(),
                    default: None $(.or(Some($shown.to_owned())))?.or_else(|| {
                        $crate::config::declare::shown_default::<$codec>(&defaults.$field).map(|d| format!("`{d}`"))
                    }),
                }),*]
            }
        }
    };
}

pub(crate) use section;
