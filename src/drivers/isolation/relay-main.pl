# The inside end of a network-namespace relay (netns-relay.ts), in Perl: the same contract
# as relay-main.mjs (listen on 127.0.0.1:<port> in the namespace nsenter put it in, carry
# each connection to the unix socket <path>, print `ready <port>` once listening, end when
# stdin closes or on SIGTERM), at a tenth of node's start-up cost: a relay per sandboxed
# run (../local/bwrap.ts) starts in milliseconds. Only modules of perl-base, which every
# Debian system has. One forked process per connection; either side's end or error ends
# both, as splice.mjs does. With `nostdin` it does not watch stdin: whoever started it
# holds it otherwise (a cgroup). With `lo-up` it first brings up the loopback of a
# namespace just made for it (`unshare --net`), which needs CAP_NET_ADMIN there.
#
#   perl relay-main.pl <port> <unix socket path> [nostdin] [lo-up]
use strict;
use warnings;
use Socket qw(AF_INET SOCK_DGRAM SOCK_STREAM);
use IO::Socket::INET;
use IO::Socket::UNIX;
use IO::Select;

my ($port, $path, @flags) = @ARGV;
my %flag = map { $_ => 1 } @flags;
my $watch_stdin = !$flag{nostdin};
unless (defined $port && $port =~ /^\d{1,5}$/ && $port >= 1 && $port <= 65535 && defined $path && length $path) {
  print STDERR "usage: relay-main.pl <port 1-65535> <unix socket path>\n";
  exit 2;
}
if ($flag{'lo-up'}) {
  # SIOCGIFFLAGS / SIOCSIFFLAGS on `lo` (struct ifreq: 16 bytes of name, 24 of union): add IFF_UP | IFF_RUNNING.
  socket(my $s, AF_INET, SOCK_DGRAM, 0) or do { print STDERR "relay: no socket to bring up lo: $!\n"; exit 4 };
  my $ifr = pack('a16 x24', 'lo');
  ioctl($s, 0x8913, $ifr) or do { print STDERR "relay: cannot read the flags of lo: $!\n"; exit 4 };
  my $flags = unpack('x16 s', $ifr);
  ioctl($s, 0x8914, pack('a16 s x22', 'lo', $flags | 0x1 | 0x40)) or do { print STDERR "relay: cannot bring up lo: $!\n"; exit 4 };
  close $s;
}
my $listener = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => $port, Listen => 128, ReuseAddr => 1, Proto => 'tcp');
unless ($listener) {
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
  my $outside = IO::Socket::UNIX->new(Type => SOCK_STREAM, Peer => $path) or exit 0;
  my $sel = IO::Select->new($inside, $outside);
  while (1) {
    for my $from ($sel->can_read) {
      my $to = $from == $inside ? $outside : $inside;
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

my $stdin = IO::Handle->new_from_fd(fileno(STDIN), 'r');
my $sel = IO::Select->new($listener, $watch_stdin ? ($stdin) : ());
while (1) {
  for my $h ($sel->can_read) {
    if ($h == $stdin) {
      my $n = sysread($stdin, my $buf, 4096);
      exit 0 unless $n; # the server let go of this relay, or died
      next;
    }
    my $conn = $listener->accept or next;
    my $pid = fork;
    if (defined $pid && $pid == 0) {
      close $listener;
      carry($conn);
      exit 0;
    }
    close $conn;
  }
}
