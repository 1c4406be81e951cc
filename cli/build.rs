//! Stamps the source revision into `--version` (see the riteraft-revision crate).

fn main() {
    riteraft_revision::emit();
}
