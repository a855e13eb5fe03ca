//! The `keylink` binary: everything lives in the library so that a third party can build a binary
//! with extra connectors (`use their_connector as _; fn main() { keylink::main() }`).

fn main() {
    keylink::main()
}
