# Draws the delivery latency of a heartbeat-bench run (its --plot-data directory):
#   gnuplot -e "data='DIR'; out='DIR'; title='...'" scripts/plot.gp
# writes delivery_by_second.png (p50, p99 and max of the pings sent in each second) and
# delivery_distribution.png (the share of deliveries slower than each latency, log-log:
# the tail at a glance).
set terminal pngcairo size 900,480 font "sans,10"
set grid
set key top right

set output out."/delivery_by_second.png"
set title title." - delivery latency by second of the run"
set xlabel "second of the run (pings sent in it)"
set ylabel "latency (ms)"
set logscale y
plot data."/by_second.dat" using 1:4 with linespoints title "max", \
     data."/by_second.dat" using 1:3 with linespoints title "p99", \
     data."/by_second.dat" using 1:2 with linespoints title "p50"

set output out."/delivery_distribution.png"
set title title." - share of deliveries slower than a latency"
set xlabel "latency (ms)"
set ylabel "share of deliveries slower"
set logscale xy
set format y "10^{%L}"
plot data."/distribution.dat" using 1:2 with lines linewidth 2 title "deliveries"
