//! The upstream side of a fetch: the HTTP [`client`], the [`egress`] policy it enforces (with
//! the [`https`] rule), and the [`redact`]ion of URLs before they are shown.

pub mod client;
pub mod egress;
pub mod https;
pub mod redact;

/// The first error of type `T` in `error`'s source chain: reqwest wraps what the resolver (the
/// egress policy) and the redirect policy (the https rule) refuse with.
pub fn found_in_chain<'a, T: std::error::Error + 'static>(
    error: &'a (dyn std::error::Error + 'static),
) -> Option<&'a T> {
    std::iter::successors(Some(error), |e| e.source()).find_map(|e| e.downcast_ref::<T>())
}
