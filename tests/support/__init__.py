"""What the tests share and that is not a test itself: the real servers they run
(the registry testbed, a DNS server, small threaded servers), Portcullis as a
process, the HTTP/CONNECT client side, network namespaces and ClientHello bytes.

Nothing here is collected by pytest (no `test_*.py` files), and no test module
imports another test module: a helper that two tests need lives here.
"""
