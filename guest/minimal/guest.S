/*
 * migtrace's minimal guest: a bare-metal PVH kernel that dirties memory in the
 * paper's cyclic pattern and checks it, for real KVM migrations on hosts whose KVM
 * cannot run a Linux guest (kvm_pvm runs only a guest that never enables interrupts
 * and never faults).
 *
 * Entered in 32-bit protected mode with paging off (PVH), %ebx = start info. It stays
 * there: no paging, no interrupts, no IDT, no SSE, nothing that can fault. Every
 * instruction may be emulated by the host (kvm_pvm does), so the loops are short.
 *
 * Parameters come from the PVH command line, integers separated by spaces:
 *   wset=64M       working set (bytes; K, M, G suffixes, binary), at WSET_BASE; held
 *                  (stamped once) without a pattern, like the paper's locked pages
 *   period_us=N    cycle length (default 10000)
 *   bpc=N | rate=N pages modified per cycle, or per second (spread over the cycles)
 *   fill=N         percent of each page written (default 100; the header always is)
 *   hb_us=N        heartbeat interval (default 1000; 0: none)
 *   tsc_khz=N      TSC frequency; default: calibrated against the PIT
 *
 * Every page starts with a header: its index, then the pass that last wrote it. Pass p
 * checks a page still holds (index, p - 1) before writing (index, p); the serial
 * request `C<nonce>\n` checks every page against the writes made so far. Bad pages are
 * reported with their address. Output: JSON lines after "migtrace-guest: " on COM1,
 * and a heartbeat byte (HEARTBEAT) every hb_us, which the host stamps and strips.
 */

    .set COM1, 0x3f8
    .set COM1_LSR, 0x3fd
    .set HEARTBEAT, 0x06
    .set WSET_BASE, 0x400000
    .set PAGE, 4096
    .set PVH_MAGIC, 0x336ec578
    .set PIT_HZ, 1193182
    /* 50 ms of PIT ticks per calibration run; the median of CAL_RUNS is taken. */
    .set CAL_LATCH, 59659
    .set CAL_RUNS, 5
    .set MAX_BAD_REPORTS, 16

    .code32

    .section .note.pvh, "a", @note
    .align 4
    .long 4
    .long 4
    .long 18                    /* XEN_ELFNOTE_PHYS32_ENTRY */
    .asciz "Xen"
    .long _start

    .text
    .globl _start
_start:
    cld
    mov $stack_top, %esp
    mov %ebx, start_info

    call parse_cmdline
    call check_memmap
    call setup_clock
    call init_wset
    call print_start
    call main_loop              /* never returns */

/* ---------------------------------------------------------------------------------
 * The main loop: cycles of the dirty pattern, heartbeats, check requests, progress.
 * ------------------------------------------------------------------------------- */
main_loop:
    rdtsc
    mov %eax, start_tsc
    mov %edx, start_tsc+4
    mov %eax, last_progress_tsc
    mov %edx, last_progress_tsc+4
    mov %eax, last_check_tsc
    mov %edx, last_check_tsc+4
    mov $next_cycle, %edi
    call schedule_from_now
    mov $next_hb, %edi
    call schedule_from_now
    mov $next_poll, %edi
    call schedule_from_now
    mov $next_progress, %edi
    call schedule_from_now
    cmpl $0, hb_us
    setne hb_armed
.Lloop:
    call heartbeat
    cmpl $0, dirty
    je 1f
    mov $next_cycle, %edi
    call due
    jc 1f
    call cycle
1:  mov $next_poll, %edi
    call due
    jc 2f
    call poll_serial
2:  mov $next_progress, %edi
    call due
    jc .Lloop
    call print_progress
    jmp .Lloop

/*
 * Whether the deadline at %edi (u64 TSC, its interval in the next u64) has come.
 * CF=1: not yet. CF=0: due; the deadline moves on by one interval, or restarts from
 * now when we are more than MAX_LAG intervals behind (the guest was not running; no
 * burst to catch up), counted in resyncs for the cycle deadline.
 */
due:
    rdtsc
    sub (%edi), %eax
    sbb 4(%edi), %edx
    js .Lnot_due
    /* lag = now - deadline, in edx:eax; behind by more than 10 intervals? */
    push %eax
    push %edx
    mov 8(%edi), %eax
    mov 12(%edi), %edx
    mov $10, %ecx
    call mul64
    mov %eax, %ecx
    mov %edx, %ebx
    pop %edx
    pop %eax
    cmp %ebx, %edx
    ja .Lresync
    jb .Lnext
    cmp %ecx, %eax
    ja .Lresync
.Lnext:
    mov 8(%edi), %eax
    add %eax, (%edi)
    mov 12(%edi), %eax
    adc %eax, 4(%edi)
    clc
    ret
.Lresync:
    cmp $next_cycle, %edi
    jne 1f
    incl resyncs
1:  call schedule_from_now
    clc
    ret
.Lnot_due:
    stc
    ret

/* Deadline at %edi := now + its interval. */
schedule_from_now:
    rdtsc
    add 8(%edi), %eax
    adc 12(%edi), %edx
    mov %eax, (%edi)
    mov %edx, 4(%edi)
    ret

/* One heartbeat byte when due (clobbers %eax, %ecx, %edx). Called between page
 * writes and between characters. */
heartbeat:
    cmpl $0, hb_armed
    je 1f
    push %edi
    push %ebx
    mov $next_hb, %edi
    call due
    pop %ebx
    pop %edi
    jc 1f
    mov $HEARTBEAT, %al
    mov $COM1, %dx
    out %al, %dx
    addl $1, heartbeats
    adcl $0, heartbeats+4
1:  ret

/* One cycle: the next pages of the working set, as many as the rate allows. */
cycle:
    mov acc, %eax
    mov acc+4, %edx
    add step, %eax
    adc step+4, %edx
    mov $1000000, %ecx
    call div64
    mov %ecx, acc
    movl $0, acc+4
    mov %eax, %esi
    incl cycles
1:  test %esi, %esi
    jz 2f
    call write_page
    call heartbeat
    dec %esi
    jmp 1b
2:  ret

/*
 * Writes the page at the cursor: checks it holds (index, pass - 1), writes
 * (index, pass) and fills FILL percent of it, advances the cursor.
 */
write_page:
    push %esi
    mov cursor, %ebx
    mov %ebx, %edi
    shl $12, %edi
    add $WSET_BASE, %edi
    mov pass, %ecx
    dec %ecx
    cmp %ebx, (%edi)
    jne 1f
    cmp %ecx, 4(%edi)
    je 2f
1:  incl stale_on_write
    mov $msg_when_write, %esi
    call report_bad
2:  mov %ebx, (%edi)
    mov pass, %eax
    mov %eax, 4(%edi)
    mov fill_dwords, %ecx
    jecxz 3f
    imul $0x9e3779b9, %eax      /* page contents change with every pass */
    xor %ebx, %eax
    add $8, %edi
    rep stosl
3:  addl $1, writes
    adcl $0, writes+4
    inc %ebx
    cmp wset_pages, %ebx
    jb 4f
    xor %ebx, %ebx
    incl pass
4:  mov %ebx, cursor
    pop %esi
    ret

/*
 * Reports a bad page: %ebx index, %edi its address, %ecx the pass it should hold,
 * %esi what found it. At most MAX_BAD_REPORTS lines per check or run of writes.
 * Preserves %ebx, %ecx, %edi.
 */
report_bad:
    cmpl $MAX_BAD_REPORTS, bad_reports
    jae 1f
    incl bad_reports
    push %ecx
    push %esi
    mov $msg_bad_page, %esi
    call puts
    mov %edi, %eax
    call put_u32
    mov $msg_bad_index, %esi
    call puts
    mov %ebx, %eax
    call put_u32
    mov $msg_bad_expected, %esi
    call puts
    mov 4(%esp), %eax
    call put_u32
    mov $msg_bad_found_index, %esi
    call puts
    mov (%edi), %eax
    call put_u32
    mov $msg_bad_found, %esi
    call puts
    mov 4(%edi), %eax
    call put_u32
    mov $msg_bad_when, %esi
    call puts
    pop %esi
    call puts
    mov $msg_quote_end, %esi
    call puts
    pop %ecx
1:  ret

/*
 * A request from the host on COM1: `C<nonce>\n` asks for a check of the working
 * set. Anything else is ignored.
 */
poll_serial:
    mov $COM1_LSR, %dx
    in %dx, %al
    test $1, %al
    jz 1f
    mov $COM1, %dx
    in %dx, %al
    cmp $'C', %al
    jne 1f
    call read_nonce
    call check_wset
1:  ret

/* Reads decimal digits from COM1 up to a newline (50 ms at most) into %eax. */
read_nonce:
    push %ebx
    push %esi
    xor %ebx, %ebx
    rdtsc
    mov %eax, %esi              /* low TSC word: 50 ms is far below 2^32 ticks */
1:  rdtsc
    sub %esi, %eax
    cmp poll_timeout, %eax
    ja 3f
    mov $COM1_LSR, %dx
    in %dx, %al
    test $1, %al
    jz 1b
    mov $COM1, %dx
    in %dx, %al
    sub $'0', %al
    cmp $9, %al
    ja 3f
    movzbl %al, %ecx
    imul $10, %ebx
    add %ecx, %ebx
    jmp 1b
3:  mov %ebx, %eax
    pop %esi
    pop %ebx
    ret

/*
 * Checks every page against the writes so far: pages before the cursor hold the
 * current pass, the others the previous one. Answers with a JSON line.
 */
check_wset:
    mov %eax, nonce
    movl $0, bad_reports
    movl $0, mismatches
    movl $0, first_bad_found
    rdtsc
    mov %eax, check_start
    mov %edx, check_start+4
    xor %ebx, %ebx
    mov $WSET_BASE, %edi
1:  cmp wset_pages, %ebx
    jae 4f
    mov pass, %ecx
    cmp cursor, %ebx
    jb 2f
    dec %ecx
2:  cmp %ebx, (%edi)
    jne 3f
    cmp %ecx, 4(%edi)
    je 5f
3:  incl mismatches
    cmpl $0, first_bad_found
    jne 6f
    movl $1, first_bad_found
    mov %ebx, first_bad_page
    mov %edi, first_bad_address
    mov %ecx, first_bad_expected
    mov (%edi), %eax
    mov %eax, first_bad_found_index
    mov 4(%edi), %eax
    mov %eax, first_bad_found_pass
6:  mov $msg_when_check, %esi
    call report_bad
5:  call heartbeat
    inc %ebx
    add $PAGE, %edi
    jmp 1b
4:  incl checks
    mov $msg_check, %esi
    call puts
    mov nonce, %eax
    call put_u32
    mov $msg_pages_checked, %esi
    call puts
    mov wset_pages, %eax
    call put_u32
    mov $msg_mismatches, %esi
    call puts
    mov mismatches, %eax
    call put_u32
    mov $msg_mismatches_on_write, %esi
    call puts
    mov stale_on_write, %eax
    sub stale_at_last_check, %eax
    call put_u32
    mov stale_on_write, %eax
    mov %eax, stale_at_last_check
    mov $msg_writes, %esi
    call puts
    mov writes, %eax
    mov writes+4, %edx
    call put_u64
    mov $msg_checks, %esi
    call puts
    mov checks, %eax
    call put_u32
    mov $msg_check_ms, %esi
    call puts
    mov $check_start, %edi
    call ms_since
    call put_u32
    mov $msg_rate_since, %esi
    call puts
    mov $last_check_tsc, %edi
    mov $last_check_writes, %esi
    call rate_since
    call put_u32
    mov $msg_region_address, %esi
    call puts
    mov $WSET_BASE, %eax
    call put_u32
    cmpl $0, first_bad_found
    je 7f
    mov $msg_first_bad, %esi
    call puts
    mov first_bad_page, %eax
    call put_u32
    mov $msg_address, %esi
    call puts
    mov first_bad_address, %eax
    call put_u32
    mov $msg_expected_generation, %esi
    call puts
    mov first_bad_expected, %eax
    call put_u32
    mov $msg_found_index, %esi
    call puts
    mov first_bad_found_index, %eax
    call put_u32
    mov $msg_found_generation, %esi
    call puts
    mov first_bad_found_pass, %eax
    call put_u32
    mov $msg_close, %esi
    call puts
7:  mov $msg_end, %esi
    call puts
    movl $0, bad_reports
    /* The workload paused for the check: no burst to catch up afterwards. */
    mov $next_cycle, %edi
    call schedule_from_now
    ret

/* Milliseconds since the TSC stamp at %edi, in %eax. */
ms_since:
    rdtsc
    sub (%edi), %eax
    sbb 4(%edi), %edx
    mov tsc_khz, %ecx
    call div64
    ret

/*
 * Pages written per second since the stamp at %edi (TSC) and %esi (writes); both
 * move to now. In %eax.
 */
rate_since:
    push %ebx
    rdtsc
    push %edx
    push %eax
    sub (%edi), %eax
    sbb 4(%edi), %edx
    mov tsc_khz, %ecx
    call div64                  /* ms */
    mov %eax, %ebx
    pop %eax
    pop %edx
    mov %eax, (%edi)
    mov %edx, 4(%edi)
    mov writes, %eax
    mov writes+4, %edx
    xchg (%esi), %eax
    xchg 4(%esi), %edx
    neg %eax                    /* writes - previous, as a 64-bit difference */
    adc $0, %edx
    neg %edx
    add (%esi), %eax
    adc 4(%esi), %edx
    test %ebx, %ebx
    jz 1f
    mov $1000, %ecx
    call mul64
    mov %ebx, %ecx
    call div64
    pop %ebx
    ret
1:  xor %eax, %eax
    pop %ebx
    ret

print_progress:
    mov $msg_progress, %esi
    call puts
    mov $start_tsc, %edi
    call ms_since
    call put_u32
    mov $msg_pass, %esi
    call puts
    mov pass, %eax
    call put_u32
    mov $msg_writes, %esi
    call puts
    mov writes, %eax
    mov writes+4, %edx
    call put_u64
    mov $msg_rate, %esi
    call puts
    mov $last_progress_tsc, %edi
    mov $last_progress_writes, %esi
    call rate_since
    call put_u32
    mov $msg_cycles, %esi
    call puts
    mov cycles, %eax
    call put_u32
    mov $msg_resyncs, %esi
    call puts
    mov resyncs, %eax
    call put_u32
    mov $msg_stale, %esi
    call puts
    mov stale_on_write, %eax
    call put_u32
    mov $msg_heartbeats, %esi
    call puts
    mov heartbeats, %eax
    mov heartbeats+4, %edx
    call put_u64
    mov $msg_end, %esi
    call puts
    movl $0, bad_reports
    ret

/* ---------------------------------------------------------------------------------
 * Start-up: command line, memory map, clock, working set.
 * ------------------------------------------------------------------------------- */

parse_cmdline:
    mov start_info, %ebx
    cmpl $PVH_MAGIC, (%ebx)
    je 1f
    mov $err_magic, %esi
    jmp fatal
1:  mov 24(%ebx), %esi          /* cmdline_paddr (below 4 GiB) */
    test %esi, %esi
    jz .Lcmd_done
.Lcmd_next:
    mov (%esi), %al
    test %al, %al
    jz .Lcmd_done
    cmp $' ', %al
    ja 2f
    inc %esi
    jmp .Lcmd_next
2:  mov $key_wset, %edi
    call match_key
    jc 3f
    call parse_uint
    call size_suffix
    mov %eax, wset_bytes
    jmp .Lcmd_token_end
3:  mov $key_period, %edi
    call match_key
    jc 4f
    call parse_uint
    mov %eax, period_us
    jmp .Lcmd_token_end
4:  mov $key_bpc, %edi
    call match_key
    jc 5f
    call parse_uint
    mov %eax, bpc
    jmp .Lcmd_token_end
5:  mov $key_rate, %edi
    call match_key
    jc 6f
    call parse_uint
    mov %eax, rate
    jmp .Lcmd_token_end
6:  mov $key_fill, %edi
    call match_key
    jc 7f
    call parse_uint
    mov %eax, fill
    jmp .Lcmd_token_end
7:  mov $key_hb, %edi
    call match_key
    jc 8f
    call parse_uint
    mov %eax, hb_us
    jmp .Lcmd_token_end
8:  mov $key_tsc, %edi
    call match_key
    jc 9f
    call parse_uint
    mov %eax, tsc_khz
    movl $1, tsc_from_cmdline
    jmp .Lcmd_token_end
9:  mov $err_unknown_key, %esi
    jmp fatal
.Lcmd_token_end:
    mov (%esi), %al
    test %al, %al
    jz .Lcmd_done
    cmp $' ', %al
    jbe .Lcmd_next
    mov $err_bad_value, %esi
    jmp fatal
.Lcmd_done:
    /* Validate and derive. */
    cmpl $100, fill
    jbe 1f
    mov $err_fill, %esi
    jmp fatal
1:  cmpl $0, period_us
    jne 2f
    mov $err_period, %esi
    jmp fatal
2:  cmpl $0, bpc
    je 3f
    cmpl $0, rate
    je 3f
    mov $err_bpc_and_rate, %esi
    jmp fatal
3:  mov wset_bytes, %eax
    shr $12, %eax
    mov %eax, wset_pages
    /* step: millionths of a page per cycle (bpc * 1e6, or rate * period_us) */
    mov bpc, %eax
    mov $1000000, %ecx
    mul %ecx
    mov %eax, step
    mov %edx, step+4
    cmpl $0, rate
    je 4f
    mov rate, %eax
    mull period_us
    mov %eax, step
    mov %edx, step+4
4:  mov step, %eax
    or step+4, %eax
    jz 6f                       /* no pattern: the working set is only held */
    movl $1, dirty
    cmpl $0, wset_pages
    jne 6f
    mov $err_no_wset, %esi
    jmp fatal
6:  /* fill_dwords = (fill * PAGE / 100 - 8) / 4, at least 0 */
    mov fill, %eax
    imul $PAGE, %eax
    xor %edx, %edx
    mov $100, %ecx
    div %ecx
    mov %eax, fill_bytes
    sub $8, %eax
    jg 7f
    xor %eax, %eax
7:  shr $2, %eax
    mov %eax, fill_dwords
    ret

/*
 * If %esi starts with the key at %edi (NUL-terminated, with its '='): CF=0 and %esi
 * past it. Else CF=1, %esi unchanged.
 */
match_key:
    push %esi
1:  mov (%edi), %al
    test %al, %al
    jz 2f
    cmp (%esi), %al
    jne 3f
    inc %esi
    inc %edi
    jmp 1b
2:  add $4, %esp
    clc
    ret
3:  pop %esi
    stc
    ret

/* A decimal number at %esi into %eax; %esi past it. Fatal without digits or over 2^32. */
parse_uint:
    push %ebx
    xor %eax, %eax
    xor %ecx, %ecx
    mov (%esi), %bl
    sub $'0', %bl
    cmp $9, %bl
    ja 3f
1:  mov (%esi), %bl
    sub $'0', %bl
    cmp $9, %bl
    ja 2f
    mov $10, %ecx
    mul %ecx
    jc 4f
    movzbl %bl, %ecx
    add %ecx, %eax
    jc 4f
    inc %esi
    jmp 1b
2:  pop %ebx
    ret
3:  mov $err_bad_value, %esi
    jmp fatal
4:  mov $err_too_large, %esi
    jmp fatal

/* An optional K, M or G after a number in %eax; must stay below 4 GiB. */
size_suffix:
    mov (%esi), %cl
    or $0x20, %cl               /* lower case */
    mov $10, %ch
    cmp $'k', %cl
    je 1f
    mov $20, %ch
    cmp $'m', %cl
    je 1f
    mov $30, %ch
    cmp $'g', %cl
    je 1f
    ret
1:  inc %esi
    mov %ch, %cl
    xor %edx, %edx
    shld %cl, %eax, %edx
    shl %cl, %eax
    test %edx, %edx
    jz 2f
    mov $err_too_large, %esi
    jmp fatal
2:  ret

/*
 * The working set must lie in RAM: one memory-map entry of type 1 (PVH start info
 * version 1 and later) must hold [WSET_BASE, WSET_BASE + wset).
 */
check_memmap:
    cmpl $0, wset_pages
    je 9f
    mov wset_pages, %eax
    shl $12, %eax
    add $WSET_BASE, %eax
    jc 8f
    mov %eax, %edi              /* end of the working set */
    mov start_info, %ebx
    cmpl $1, 4(%ebx)
    jb 9f                       /* version 0: no memory map to check against */
    mov 48(%ebx), %ecx          /* memmap_entries */
    mov 40(%ebx), %esi          /* memmap_paddr */
    jecxz 9f
1:  cmpl $1, 16(%esi)           /* type RAM */
    jne 2f
    cmpl $0, 4(%esi)            /* addr below 4 GiB */
    jne 2f
    mov (%esi), %eax
    cmp $WSET_BASE, %eax
    ja 2f
    mov (%esi), %eax            /* end = addr + size, saturated at 4 GiB */
    mov 4(%esi), %edx
    add 8(%esi), %eax
    adc 12(%esi), %edx
    test %edx, %edx
    jnz 9f
    cmp %edi, %eax
    jae 9f
2:  add $24, %esi
    loop 1b
8:  mov $err_no_ram, %esi
    jmp fatal
9:  ret

/*
 * The TSC frequency: from the command line, or measured against PIT channel 2 (mode
 * 0, CAL_LATCH ticks; OUT2 polled through port 0x61). The count starts somewhere
 * within the `out` that loads it and OUT2 rises between two polls: each end is taken
 * as the middle of the TSC stamps around it, so the error is at most half a poll
 * either way, not a bias. The median of CAL_RUNS runs is taken (a run preempted at an
 * end is an outlier); their spread is reported.
 */
setup_clock:
    cmpl $0, tsc_from_cmdline
    jne .Lderive
    xor %esi, %esi
1:  in $0x61, %al
    and $0xfc, %al
    or $0x01, %al               /* gate 2 on, speaker off */
    out %al, $0x61
    mov $0xb0, %al              /* channel 2, lobyte/hibyte, mode 0, binary */
    out %al, $0x43
    mov $(CAL_LATCH & 0xff), %al
    out %al, $0x42
    rdtsc
    mov %eax, %edi
    mov $(CAL_LATCH >> 8), %al
    out %al, $0x42              /* counting starts with the next PIT clock */
    rdtsc
    sub %edi, %eax              /* start: between the stamps around the out */
    shr $1, %eax
    add %eax, %edi
    mov %edi, %ebx              /* stamp after the last poll that saw OUT2 low */
2:  in $0x61, %al
    mov %al, %cl
    rdtsc
    test $0x20, %cl
    jnz 3f
    mov %eax, %ebx
    sub %edi, %eax              /* 50 ms: far below 2^32 ticks */
    cmp $0x80000000, %eax
    jae 5f                      /* no PIT counting (about a second at 2 GHz) */
    jmp 2b
3:  sub %ebx, %eax              /* end: between the last low poll and the high one */
    shr $1, %eax
    add %ebx, %eax
    sub %edi, %eax
    mov %eax, cal_ticks(,%esi,4)
    inc %esi
    cmp $CAL_RUNS, %esi
    jb 1b
    /* Insertion sort of the runs: median, min, max. */
    mov $1, %esi
4:  cmp $CAL_RUNS, %esi
    jae 7f
    mov cal_ticks(,%esi,4), %eax
    mov %esi, %edi
6:  test %edi, %edi
    jz 8f
    mov cal_ticks-4(,%edi,4), %edx
    cmp %eax, %edx
    jbe 8f
    mov %edx, cal_ticks(,%edi,4)
    dec %edi
    jmp 6b
8:  mov %eax, cal_ticks(,%edi,4)
    inc %esi
    jmp 4b
    /* tsc_khz = ticks * PIT_HZ / (CAL_LATCH * 1000) */
7:  mov cal_ticks+(CAL_RUNS / 2) * 4, %eax
    mov $PIT_HZ, %ecx
    mul %ecx
    mov $(CAL_LATCH * 1000), %ecx
    call div64
    mov %eax, tsc_khz
    /* spread in ppm of the median: (max - min) * 1e6 / median */
    mov cal_ticks+(CAL_RUNS - 1) * 4, %eax
    sub cal_ticks, %eax
    mov $1000000, %ecx
    mul %ecx
    mov cal_ticks+(CAL_RUNS / 2) * 4, %ecx
    call div64
    mov %eax, cal_spread_ppm
    jmp .Lderive
5:  mov $err_pit, %esi
    jmp fatal
.Lderive:
    cmpl $0, tsc_khz
    jne 1f
    mov $err_tsc, %esi
    jmp fatal
    /* interval = microseconds * tsc_khz / 1000 */
1:  mov period_us, %eax
    mov $next_cycle, %edi
    call set_interval
    mov hb_us, %eax
    mov $next_hb, %edi
    call set_interval
    mov $10000, %eax            /* check requests: every 10 ms */
    mov $next_poll, %edi
    call set_interval
    mov $1000000, %eax          /* progress: every second */
    mov $next_progress, %edi
    call set_interval
    /* 50 ms in ticks, for reading a request */
    mov tsc_khz, %eax
    imul $50, %eax
    mov %eax, poll_timeout
    ret

/* The interval of the deadline at %edi := %eax microseconds in TSC ticks. */
set_interval:
    mull tsc_khz
    mov $1000, %ecx
    call div64
    mov %eax, 8(%edi)
    mov %edx, 12(%edi)
    ret

/* Stamps every page with (index, pass 0): the working set exists before it is dirtied. */
init_wset:
    rdtsc
    mov %eax, init_start
    mov %edx, init_start+4
    mov wset_pages, %ecx
    mov $WSET_BASE, %edi
    xor %ebx, %ebx
1:  cmp %ecx, %ebx
    jae 2f
    mov %ebx, (%edi)
    movl $0, 4(%edi)
    inc %ebx
    add $PAGE, %edi
    jmp 1b
2:  movl $1, pass
    mov $init_start, %edi
    call ms_since
    mov %eax, init_ms
    ret

print_start:
    mov $msg_start, %esi
    call puts
    mov wset_pages, %eax
    call put_u32
    mov $msg_region_address, %esi
    call puts
    mov $WSET_BASE, %eax
    call put_u32
    mov $msg_period_us, %esi
    call puts
    mov period_us, %eax
    call put_u32
    mov $msg_bpc, %esi
    call puts
    mov bpc, %eax
    call put_u32
    mov $msg_rate, %esi
    call puts
    mov rate, %eax
    call put_u32
    mov $msg_fill, %esi
    call puts
    mov fill, %eax
    call put_u32
    mov $msg_fill_bytes, %esi
    call puts
    mov fill_bytes, %eax
    call put_u32
    mov $msg_hb_us, %esi
    call puts
    mov hb_us, %eax
    call put_u32
    mov $msg_tsc_khz, %esi
    call puts
    mov tsc_khz, %eax
    call put_u32
    mov $msg_tsc_from, %esi
    call puts
    mov $msg_from_pit, %esi
    cmpl $0, tsc_from_cmdline
    je 1f
    mov $msg_from_cmdline, %esi
1:  call puts
    mov $msg_spread, %esi
    call puts
    mov cal_spread_ppm, %eax
    call put_u32
    mov $msg_init_ms, %esi
    call puts
    mov init_ms, %eax
    call put_u32
    mov $msg_end, %esi
    call puts
    ret

/* Reports `migtrace-guest: {"event":"error","message":"<%esi>"}` and stops for good. */
fatal:
    push %esi
    mov $msg_error, %esi
    call puts
    pop %esi
    call puts
    mov $msg_error_end, %esi
    call puts
1:  hlt
    jmp 1b

/* ---------------------------------------------------------------------------------
 * Arithmetic and output.
 * ------------------------------------------------------------------------------- */

/* %edx:%eax / %ecx: quotient in %edx:%eax, remainder in %ecx. */
div64:
    push %ebx
    mov %eax, %ebx
    mov %edx, %eax
    xor %edx, %edx
    div %ecx
    xchg %eax, %ebx
    div %ecx
    mov %edx, %ecx
    mov %ebx, %edx
    pop %ebx
    ret

/* %edx:%eax * %ecx, low 64 bits in %edx:%eax. */
mul64:
    push %ebx
    mov %edx, %ebx
    imul %ecx, %ebx
    mul %ecx
    add %ebx, %edx
    pop %ebx
    ret

/* The NUL-terminated string at %esi; a heartbeat may fall between its characters. */
puts:
    push %esi
    push %edx
1:  lodsb
    test %al, %al
    jz 2f
    mov $COM1, %dx
    out %al, %dx
    call heartbeat
    jmp 1b
2:  pop %edx
    pop %esi
    ret

put_u32:
    xor %edx, %edx
    /* fall through */

/* %edx:%eax in decimal. */
put_u64:
    push %esi
    push %edi
    mov $numbuf_end, %edi
    movb $0, (%edi)
1:  mov $10, %ecx
    call div64
    add $'0', %cl
    dec %edi
    mov %cl, (%edi)
    mov %eax, %ecx
    or %edx, %ecx
    jnz 1b
    mov %edi, %esi
    call puts
    pop %edi
    pop %esi
    ret

    .section .rodata
key_wset:           .asciz "wset="
key_period:         .asciz "period_us="
key_bpc:            .asciz "bpc="
key_rate:           .asciz "rate="
key_fill:           .asciz "fill="
key_hb:             .asciz "hb_us="
key_tsc:            .asciz "tsc_khz="

msg_start:          .asciz "migtrace-guest: {\"event\":\"start\",\"wset_pages\":"
msg_region_address: .asciz ",\"region_address\":"
msg_period_us:      .asciz ",\"period_us\":"
msg_bpc:            .asciz ",\"bpc\":"
msg_fill:           .asciz ",\"fill\":"
msg_fill_bytes:     .asciz ",\"fill_bytes\":"
msg_hb_us:          .asciz ",\"heartbeat_us\":"
msg_tsc_khz:        .asciz ",\"tsc_khz\":"
msg_tsc_from:       .asciz ",\"tsc_from\":\""
msg_from_pit:       .asciz "pit"
msg_from_cmdline:   .asciz "cmdline"
msg_spread:         .asciz "\",\"calibration_spread_ppm\":"
msg_init_ms:        .asciz ",\"init_ms\":"
msg_progress:       .asciz "migtrace-guest: {\"event\":\"progress\",\"ms\":"
msg_pass:           .asciz ",\"pass\":"
msg_writes:         .asciz ",\"writes\":"
msg_rate:           .asciz ",\"rate\":"
msg_cycles:         .asciz ",\"cycles\":"
msg_resyncs:        .asciz ",\"resyncs\":"
msg_stale:          .asciz ",\"stale_on_write\":"
msg_heartbeats:     .asciz ",\"heartbeats\":"
msg_check:          .asciz "migtrace-guest: {\"event\":\"check\",\"nonce\":"
msg_pages_checked:  .asciz ",\"pages_checked\":"
msg_mismatches:     .asciz ",\"mismatches\":"
msg_mismatches_on_write: .asciz ",\"mismatches_on_write\":"
msg_checks:         .asciz ",\"checks\":"
msg_check_ms:       .asciz ",\"check_ms\":"
msg_rate_since:     .asciz ",\"rate_since_last_check\":"
msg_first_bad:      .asciz ",\"first_bad_page\":{\"page\":"
msg_address:        .asciz ",\"address\":"
msg_expected_generation: .asciz ",\"expected_generation\":"
msg_found_index:    .asciz ",\"found_index\":"
msg_found_generation: .asciz ",\"found_generation\":"
msg_close:          .asciz "}"
msg_bad_page:       .asciz "migtrace-guest: {\"event\":\"bad-page\",\"address\":"
msg_bad_index:      .asciz ",\"page\":"
msg_bad_expected:   .asciz ",\"expected_generation\":"
msg_bad_found_index: .asciz ",\"found_index\":"
msg_bad_found:      .asciz ",\"found_generation\":"
msg_bad_when:       .asciz ",\"found_by\":\""
msg_when_write:     .asciz "write"
msg_when_check:     .asciz "check"
msg_end:            .asciz "}\n"
msg_quote_end:      .asciz "\"}\n"
msg_error:          .asciz "migtrace-guest: {\"event\":\"error\",\"message\":\""
msg_error_end:      .asciz "\"}\n"

err_magic:          .asciz "no PVH start info (boot this ELF with QEMU's -kernel)"
err_unknown_key:    .asciz "unknown parameter (keys: wset, period_us, bpc, rate, fill, hb_us, tsc_khz)"
err_bad_value:      .asciz "a parameter value is not a whole number"
err_too_large:      .asciz "a parameter value is too large"
err_fill:           .asciz "fill is a percentage, 0 to 100"
err_period:         .asciz "period_us must be more than 0"
err_bpc_and_rate:   .asciz "give bpc or rate, not both"
err_no_wset:        .asciz "a dirty pattern needs a working set (wset)"
err_no_ram:         .asciz "the working set does not fit in guest RAM (starts at 4 MiB)"
err_tsc:            .asciz "no TSC frequency (tsc_khz=0)"
err_pit:            .asciz "PIT channel 2 does not count: pass tsc_khz= on the command line"

    .data
    .align 4
fill:               .long 100
period_us:          .long 10000
hb_us:              .long 1000

    .bss
    .align 8
/* Deadlines: a u64 TSC value followed by its u64 interval in ticks. */
next_cycle:         .skip 16
next_hb:            .skip 16
next_poll:          .skip 16
next_progress:      .skip 16
start_tsc:          .skip 8
init_start:         .skip 8
check_start:        .skip 8
last_progress_tsc:  .skip 8
last_progress_writes: .skip 8
last_check_tsc:     .skip 8
last_check_writes:  .skip 8
writes:             .skip 8
heartbeats:         .skip 8
step:               .skip 8
acc:                .skip 8
start_info:         .skip 4
wset_bytes:         .skip 4
wset_pages:         .skip 4
bpc:                .skip 4
rate:               .skip 4
fill_bytes:         .skip 4
fill_dwords:        .skip 4
tsc_khz:            .skip 4
tsc_from_cmdline:   .skip 4
cal_ticks:          .skip 4 * CAL_RUNS
cal_spread_ppm:     .skip 4
init_ms:            .skip 4
poll_timeout:       .skip 4
pass:               .skip 4
cursor:             .skip 4
cycles:             .skip 4
resyncs:            .skip 4
stale_on_write:     .skip 4
stale_at_last_check: .skip 4
bad_reports:        .skip 4
checks:             .skip 4
nonce:              .skip 4
mismatches:         .skip 4
first_bad_found:    .skip 4
first_bad_page:     .skip 4
first_bad_address:  .skip 4
first_bad_expected: .skip 4
first_bad_found_index: .skip 4
first_bad_found_pass: .skip 4
hb_armed:           .skip 4
dirty:              .skip 4
numbuf:             .skip 24
numbuf_end:         .skip 4
    .align 16
stack:              .skip 8192
stack_top:
