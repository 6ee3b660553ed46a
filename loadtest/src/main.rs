//! `loadtest`: drives a running Conversa (work in progress; see issue "SRE view and load test").

fn main() {}
