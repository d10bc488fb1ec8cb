"""Keys, JWTs and credentials: the device's identity and the trust it extends.

``keys`` holds nkeys (generation, encoding, signing, 0600 seed files), ``jwt`` the NATS
JWT codec and ``.creds`` files, and ``host`` the keys ``lattice-edge init`` makes.
"""
