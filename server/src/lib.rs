//! The artifact HTTP server (being written).
