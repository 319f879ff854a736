//! The Lua scripts, loaded once per process. Each file's header lists its KEYS and ARGV.

use std::sync::LazyLock;

use redis::Script;

pub struct Scripts {
    pub enqueue: Script,
    pub claim: Script,
    pub reserve: Script,
    pub unlease: Script,
    pub park: Script,
    pub release: Script,
    pub upsert_node: Script,
    pub append_log: Script,
}

pub static SCRIPTS: LazyLock<Scripts> = LazyLock::new(|| Scripts {
    enqueue: Script::new(include_str!("scripts/enqueue.lua")),
    claim: Script::new(include_str!("scripts/claim.lua")),
    reserve: Script::new(include_str!("scripts/reserve.lua")),
    unlease: Script::new(include_str!("scripts/unlease.lua")),
    park: Script::new(include_str!("scripts/park.lua")),
    release: Script::new(include_str!("scripts/release.lua")),
    upsert_node: Script::new(include_str!("scripts/upsert_node.lua")),
    append_log: Script::new(include_str!("scripts/append_log.lua")),
});
