//! The backends linked into this binary, one line per cargo feature.
//!
//! A backend registers itself with `inventory::submit!`, but rustc only links a crate that is
//! referenced; these `use … as _` lines are the references. A third-party distribution adds its
//! own backend the same way: depend on the crate and reference it from its `main.rs`.

#[cfg(feature = "filesystem")]
use externalsource_backend_filesystem as _;
#[cfg(feature = "memory")]
use externalsource_backend_memory as _;
#[cfg(feature = "s3")]
use externalsource_backend_s3 as _;

#[cfg(test)]
mod tests {
    /// The registry holds exactly the backends the cargo features enabled: a backend whose crate
    /// was not linked (the `inventory` trap) or one linked without its feature fails here.
    #[test]
    fn registry_lists_exactly_the_enabled_backends() {
        let mut expected = Vec::new();
        if cfg!(feature = "filesystem") {
            expected.push("filesystem");
        }
        if cfg!(feature = "memory") {
            expected.push("memory");
        }
        if cfg!(feature = "s3") {
            expected.push("s3");
        }
        assert_eq!(externalsource_core::registry::backend_names(), expected);
    }
}
