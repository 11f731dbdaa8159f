#!/bin/busybox sh
# PID 1 of the reference guest (record.py): load virtio-balloon, say what the
# kernel's memory looks like after boot, run the workload, power off.
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
# Read before the driver loads: the registration mark below must follow insmod
# at once (the schedule pagehint keeps counts from it).
order=$(sed -n 's/.*pagehint.order=\([0-9]*\).*/\1/p' /proc/cmdline)
for m in virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_balloon; do
    insmod /lib/$m.ko || echo "PAGEHINT-ERROR insmod $m"
done
echo "PAGEHINT-MARK registered"
# --boot-map: the guest's page states now, before any pass (the first is 2 s
# away) and before the workload; the host reads QEMU's page map at this mark.
if grep -q pagehint.bootmap=1 /proc/cmdline; then
    /workload kpageflags || echo "PAGEHINT-ERROR kpageflags"
fi
# Linux 6.1's page_reporting_register() sets page_reporting_order to the
# driver's order or pageblock_order, whatever the command line said (the fix,
# "mm/page_reporting: Add checks for page_reporting_order param", is 6.2's);
# the parameter is read at every free and every pass, so written now it is
# what the passes use (the first is 2 s away). The value read back below is
# recorded as the order that ran.
if [ -n "$order" ]; then
    echo "$order" > /sys/module/page_reporting/parameters/page_reporting_order \
        || echo "PAGEHINT-ERROR page_reporting_order $order"
fi
sleep 1
mode=$(sed -n 's/.*pagehint.mode=\([a-z]*\).*/\1/p' /proc/cmdline)
region=$(sed -n 's/.*pagehint.region=\([0-9]*\).*/\1/p' /proc/cmdline)
for f in zoneinfo pagetypeinfo buddyinfo meminfo iomem; do
    echo "PAGEHINT-BEGIN $f"; cat /proc/$f; echo "PAGEHINT-END $f"
done
echo "PAGEHINT-BEGIN thp"; cat /sys/kernel/mm/transparent_hugepage/enabled; echo "PAGEHINT-END thp"
echo "PAGEHINT-BEGIN min_free_kbytes"; cat /proc/sys/vm/min_free_kbytes; echo "PAGEHINT-END min_free_kbytes"
echo "PAGEHINT-BEGIN reporting_order"; cat /sys/module/page_reporting/parameters/page_reporting_order; echo "PAGEHINT-END reporting_order"
# --trace-reports: each report's pages, by order, as the kernel isolated them
# (kprobes on __isolate_free_page and the driver's report callback; nothing else
# calls the first while the workload runs, as nothing compacts).
if grep -q pagehint.trace=1 /proc/cmdline; then
    mount -t tracefs nodev /sys/kernel/tracing
    t=/sys/kernel/tracing
    echo 'p:iso __isolate_free_page order=%si' >> $t/kprobe_events \
        && echo 'p:rep virtballoon_free_page_report nents=%dx' >> $t/kprobe_events \
        && echo 1 > $t/events/kprobes/enable || echo "PAGEHINT-ERROR kprobes"
fi
# --trace-drains: the free's page frees, allocations and per-CPU drains, traced
# for the munmap alone (workload.c turns tracing on and off around it).
if grep -q pagehint.tracedrains=1 /proc/cmdline; then
    mount -t tracefs nodev /sys/kernel/tracing 2>/dev/null
    t=/sys/kernel/tracing
    echo 0 > $t/tracing_on
    echo 16384 > $t/buffer_size_kb
    for e in mm_page_alloc mm_page_free mm_page_free_batched mm_page_pcpu_drain; do
        echo 1 > $t/events/kmem/$e/enable || echo "PAGEHINT-ERROR trace $e"
    done
    export PAGEHINT_TRACE_FREE=1
fi
echo "PAGEHINT-MARK start"
/workload "$mode" "$region" 4 25
# Each drain (a run of mm_page_pcpu_drain, one event a page, between the frees that
# commit pages to the list: mm_page_free_batched, mm_page_free) by its size, in order;
# then the pages freed and allocated while the munmap ran.
if grep -q pagehint.tracedrains=1 /proc/cmdline; then
    grep -v "^#" /sys/kernel/tracing/trace | awk '
        $5 == "mm_page_pcpu_drain:" { d++; next }
        d { drains = drains " " d; d = 0 }
        $5 == "mm_page_free:" { f++ }
        $5 == "mm_page_alloc:" { a++ }
        END { if (d) drains = drains " " d
              print "PAGEHINT-DRAINS" drains; print "PAGEHINT-FREEOPS", f + 0, a + 0 }'
fi
if grep -q pagehint.trace=1 /proc/cmdline; then
    echo "PAGEHINT-BEGIN trace"
    grep -v "^#" /sys/kernel/tracing/trace | awk '{print $4, $5, $NF}'
    echo "PAGEHINT-END trace"
fi
echo "PAGEHINT-BEGIN buddyinfo-after"; cat /proc/buddyinfo; echo "PAGEHINT-END buddyinfo-after"
echo "PAGEHINT-BEGIN vmstat-after"; grep -E "pgfree|pgalloc|thp" /proc/vmstat; echo "PAGEHINT-END vmstat-after"
echo PAGEHINT-POWEROFF
poweroff -f
