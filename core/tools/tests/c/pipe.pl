# A forked perl child writes numbered lines into a pipe at a slow pace;
# the parent reads them, keeps a running checksum, and prints each line.
use strict;
use warnings;
my $n = shift // 100;
pipe(my $r, my $w) or die "pipe: $!";
my $pid = fork() // die "fork: $!";
if ($pid == 0) {
    close $r;
    select((select($w), $| = 1)[0]);
    for my $i (1 .. $n) {
        print $w "item $i\n";
        select(undef, undef, undef, 0.02);
    }
    close $w;
    exit 0;
}
close $w;
$| = 1;
my ($count, $sum) = (0, 0);
while (my $l = <$r>) {
    chomp $l;
    $count++;
    $sum = ($sum * 31 + length($l) + $count) % 1000003;
    print "$count $sum $l\n";
}
waitpid($pid, 0);
print "perl done ", $? >> 8, "\n";
