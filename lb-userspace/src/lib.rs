//! xlb: the daemon and CLI of the xlb XDP load balancer.
