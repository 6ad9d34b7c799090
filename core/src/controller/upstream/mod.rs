//! The upstream side of a fetch: the HTTP [`client`], the [`egress`] policy it enforces, and
//! the [`redact`]ion of URLs before they are shown.

pub mod client;
pub mod egress;
pub mod redact;
