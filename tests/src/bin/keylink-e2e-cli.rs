//! The keylink CLI, built the way a third party with their own connector would build it: the
//! `shelf` connector (tests/example-connector, depending on keylink-core alone) compiled in.
use keylink_connector_shelf as _;

fn main() {
    keylink::main()
}
