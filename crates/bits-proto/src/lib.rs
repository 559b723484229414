pub mod v1 {
    tonic::include_proto!("bits.v1");
}
