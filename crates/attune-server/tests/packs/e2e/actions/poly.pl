# Perl: reads JSON parameters from stdin (core JSON::PP).
use strict;
use warnings;
use JSON::PP;
local $/;
my $params = decode_json(<STDIN>);
print encode_json({ language => "perl", greeting => "Hello, $params->{name}", version => "$]" }), "\n";
