// Package dmq is a node on Kamailio's DMQ bus: the KDMQ subset of SIP, a UDP
// transport with the client transactions of a non-INVITE SIP request, the
// node list (notification_peer), and peers that mirror or observe what the
// Kamailio nodes replicate (htable, usrloc, dialog).
//
// Everything here follows what Kamailio 5.6.3 does on the wire, as recorded
// from a real bus (testdata/wire holds the exact payloads), not what its
// documentation says where the two differ.
//
// Two facts shape the design more than any other:
//   - Receivers never relay. A change made here is broadcast by this node to
//     every active node itself (Node.Broadcast).
//   - One malformed node-list line wedges a 5.6.3 node's DMQ until restart.
//     Every line this package emits or accepts goes through ParseNodeLine.
package dmq
