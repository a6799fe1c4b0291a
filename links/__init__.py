"""How chunkrl's processes are linked: addresses and sockets, CURVE, registration at the
learner's rendezvous, and the weights link -- the client and the server half of each side
by side. What travels on the links (messages, codec, ids) is :mod:`protocol`'s.

* :mod:`links.wiring`: every address, the sockets each role binds or connects, and each
  link's endpoint, ready (the messages it accepts set);
* :mod:`links.security`: CURVE keys and the ZAP handler;
* :mod:`links.registration` (client) and :mod:`links.rendezvous` (the learner's server
  half and its books): who is live, and where the others are;
* :mod:`links.weights` (the wire format and a server's receiver) and
  :mod:`links.weight_hub` (the learner's sender): torch.distributed broadcasts.
"""
