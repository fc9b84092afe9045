# The inside end of a network-namespace relay (netns-relay.ts), in Perl: the same contract
# as relay-main.mjs (listen on 127.0.0.1:<port> in the namespace nsenter put it in, carry
# each connection to the unix socket <path>, print `ready <port>` once listening, end when
# stdin closes or on SIGTERM), at a fraction of node's start-up cost: a relay per sandboxed
# run (../local/bwrap.ts) or per container run starts in a few milliseconds. It loads no
# module at all (IO::Socket, IO::Select, Socket and warnings took three quarters of its
# start-up): Perl's own socket calls, with Linux's constants and address layouts, and a
# select() on bit vectors. One forked process per connection; either side's end or error
# ends both, as splice.mjs does. With `nostdin` it does not watch stdin: whoever started it
# holds it otherwise (a cgroup). With `lo-up` it first brings up the loopback of a namespace
# just made for it (`unshare --net`), which needs CAP_NET_ADMIN there.
#
#   perl relay-main.pl <port> <unix socket path> [nostdin] [lo-up]
use strict;

# Linux's values (the same on every architecture it runs on).
my ($AF_UNIX, $AF_INET, $SOCK_STREAM, $SOCK_DGRAM, $SOL_SOCKET, $SO_REUSEADDR) = (1, 2, 1, 2, 1, 2);
my ($SIOCGIFFLAGS, $SIOCSIFFLAGS) = (0x8913, 0x8914);

my ($port, $path, @flags) = @ARGV;
my %flag = map { $_ => 1 } @flags;
my $watch_stdin = !$flag{nostdin};
unless (defined $port && $port =~ /^\d{1,5}$/ && $port >= 1 && $port <= 65535 && defined $path && length $path && length $path < 108) {
  print STDERR "usage: relay-main.pl <port 1-65535> <unix socket path>\n";
  exit 2;
}
if ($flag{'lo-up'}) {
  # struct ifreq: 16 bytes of name, 24 of union; add IFF_UP | IFF_RUNNING to lo's flags.
  socket(my $s, $AF_INET, $SOCK_DGRAM, 0) or do { print STDERR "relay: no socket to bring up lo: $!\n"; exit 4 };
  my $ifr = pack('a16 x24', 'lo');
  ioctl($s, $SIOCGIFFLAGS, $ifr) or do { print STDERR "relay: cannot read the flags of lo: $!\n"; exit 4 };
  my $flags = unpack('x16 s', $ifr);
  ioctl($s, $SIOCSIFFLAGS, pack('a16 s x22', 'lo', $flags | 0x1 | 0x40)) or do { print STDERR "relay: cannot bring up lo: $!\n"; exit 4 };
  close $s;
}
my $listener;
# struct sockaddr_in: family (host order), port (network order), 127.0.0.1, 8 bytes of zero.
unless (socket($listener, $AF_INET, $SOCK_STREAM, 0)
  && setsockopt($listener, $SOL_SOCKET, $SO_REUSEADDR, pack('i', 1))
  && bind($listener, pack('S n C4 x8', $AF_INET, $port, 127, 0, 0, 1))
  && listen($listener, 128)) {
  # EADDRNOTAVAIL: the namespace's loopback is down; EADDRINUSE: the port is taken inside.
  print STDERR "relay: cannot listen on 127.0.0.1:$port in this network namespace: $!\n";
  exit 3;
}
$SIG{CHLD} = 'IGNORE'; # connection processes reap themselves
$SIG{PIPE} = 'IGNORE';
$SIG{TERM} = sub { exit 0 };
$| = 1;
print "ready $port\n";

sub carry {
  my ($inside) = @_;
  # struct sockaddr_un: family, then the path, NUL-terminated.
  socket(my $outside, $AF_UNIX, $SOCK_STREAM, 0) or exit 0;
  connect($outside, pack('S Z*', $AF_UNIX, $path)) or exit 0;
  my @pair = ([$inside, $outside], [$outside, $inside]);
  my $all = '';
  vec($all, fileno($_), 1) = 1 for $inside, $outside;
  while (1) {
    my $ready = select(my $r = $all, undef, undef, undef);
    next if $ready < 0 && $! + 0 == 4; # EINTR
    exit 0 if $ready < 0;
    for my $p (@pair) {
      my ($from, $to) = @$p;
      next unless vec($r, fileno($from), 1);
      my $n = sysread($from, my $buf, 65536);
      exit 0 unless $n; # end or error on either side ends both
      my $off = 0;
      while ($off < $n) {
        my $w = syswrite($to, $buf, $n - $off, $off);
        exit 0 unless defined $w && $w > 0;
        $off += $w;
      }
    }
  }
}

my $all = '';
vec($all, fileno($listener), 1) = 1;
vec($all, 0, 1) = 1 if $watch_stdin;
while (1) {
  my $ready = select(my $r = $all, undef, undef, undef);
  next if $ready < 0 && $! + 0 == 4; # EINTR
  exit 1 if $ready < 0;
  if ($watch_stdin && vec($r, 0, 1)) {
    my $n = sysread(STDIN, my $buf, 4096);
    exit 0 unless $n; # the server let go of this relay, or died
  }
  next unless vec($r, fileno($listener), 1);
  my $conn;
  accept($conn, $listener) or next;
  my $pid = fork;
  if (defined $pid && $pid == 0) {
    close $listener;
    carry($conn);
    exit 0;
  }
  close $conn;
}
