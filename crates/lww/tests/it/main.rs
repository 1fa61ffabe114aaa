//! Integration tests of multinode-lww.
