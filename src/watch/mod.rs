//! Watches: the hub that applied revisions flow into, and the matching and
//! batching rules each watcher follows.

pub mod hub;
pub mod watcher;

pub use hub::WatchHub;
pub use watcher::Watcher;
