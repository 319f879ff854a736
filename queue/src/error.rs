use thiserror::Error;

#[derive(Debug, Error)]
pub enum QueueError {
    #[error("redis command failed")]
    Redis(#[from] redis::RedisError),
    /// Redis held something berth did not write: a bug or a foreign writer.
    #[error("corrupt queue state: {0}")]
    Corrupt(String),
}
