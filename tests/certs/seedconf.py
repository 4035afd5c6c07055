"""The seed's example ``root.conf``, as text, for tests that must not read the seed file.

The same lines as ``seed/root.conf`` with most of its comments left out (one is kept,
so the parser meets a comment line): the configuration the seed passes to
``openssl req -x509`` to make a root CA.
"""

SEED_ROOT_CONF = """\
[req]
default_bits = 2048
prompt = no
default_md = sha256
req_extensions = req_ext
x509_extensions= v3_ca
# subject distinguished name
distinguished_name = dn
[dn]
C = US
ST = Massachusetts
L = Cambridge
O = Organization
OU = IoT
emailAddress = test@email.com
CN = www.organization.test.com
[req_ext]
subjectAltName = @alt_names
nsComment = "This is netscape comment"
[ v3_ca ]
subjectKeyIdentifier=hash
authorityKeyIdentifier=keyid:always,issuer:always
basicConstraints = CA:true
[alt_names]
DNS.1 = test.example.com
"""
