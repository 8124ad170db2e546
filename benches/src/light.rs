//! Light receivers (`--light`).
