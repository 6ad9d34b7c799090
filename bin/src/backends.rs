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
