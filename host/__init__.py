"""The hypervisor side: the gRPC service, the balloon device, memory backends."""
