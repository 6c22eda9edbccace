# The guest of examples/seabios, packaged as a PCI option ROM (PCI Firmware Specification 3.0,
# BIOS Boot Specification 1.01): ROM header, PCI data structure, PnP expansion header with a
# Boot Entry Vector, checksum. It sits behind the expansion ROM BAR of the physmap test device
# 1234:0003; SeaBIOS finds it there, copies it to shadow RAM (0xc0000 and up), calls its
# initialisation entry (offset 3) and, when it boots, its BEV.
#
# Rebuild (binutils): scripts/build-optionrom.sh, which checks optionrom.bin matches this source
# (and writes the two checksums the specifications ask for).
#
# - init (real mode, far call, AX = bus/device/function): reads the device's I/O BAR from
#   config space and rings its doorbell with stage 1.
# - BEV (real mode, far call): copies the payload below to 0x10000 and enters flat 32-bit
#   protected mode there (the shadow copy it runs from is toggled between read-only and
#   read-write RAM by the VMM later, so no code runs from it).
# - payload: finds the three test devices on PCI bus 0 (config mechanism #1, 0xcf8/0xcfc),
#   reads where the firmware put their BARs, records them at 0x9000, prints them on the
#   serial port, starts the other vCPUs (INIT, SIPI, SIPI through the local APIC, SIPI vector
#   0x10: they enter at 0x10000 in real mode), rings stage 3, and then every vCPU checks, in
#   a loop: two register files behind 32- and 64-bit MMIO BARs, one behind a 64-bit
#   prefetchable BAR, two I/O BARs, the BAR the VMM keeps moving (re-read from config space
#   each time, under a lock: the 0xcf8 latch is shared), the shadowed ROM segment and the
#   BIOS F segment whose PAM attributes the VMM keeps switching, and the memory block it plugs
#   and unplugs. A wrong answer is reported on the doorbell (offset 4, the error code).
#
# Guest-physical layout (the VMM's side is examples/seabios/vmm.rs):
#   0x00009000          what the guest found (FOUND_*), read by the VMM
#   0x00009800 + 4*id   iterations done by vCPU id (up to 16); 0x9840 + 4*id: moved-BAR retries
#   0x00009880          vCPUs started by the guest; 0x9884: config-space lock; 0x9888: errors
#   0x00010000          the payload (copied here by the BEV); SIPI vector 0x10
#   0x60000000          memory block, plugged ("PLUG" at offset 0) and unplugged (all ones)
        .intel_syntax noprefix
        .text
        .globl _start

        .set ROM_BLOCKS, 8                      # 4 KiB image
        .set PAYLOAD, 0x10000
        .set FOUND, 0x9000
        .set F_A_MMIO, FOUND + 0x00             # 1234:0001 BAR0 (32-bit MMIO, regs 0xA1)
        .set F_A_IO, FOUND + 0x04               # 1234:0001 BAR1 (I/O, ports 0xC1)
        .set F_A_MMIO64, FOUND + 0x08           # 1234:0001 BAR2/3 (64-bit MMIO, regs 0xA2)
        .set F_B_PREF64, FOUND + 0x0c           # 1234:0002 BAR0/1 (64-bit prefetchable, regs 0xA3)
        .set F_B_IO, FOUND + 0x10               # 1234:0002 BAR4 (I/O, ports 0xC3)
        .set F_C_MMIO, FOUND + 0x14             # 1234:0003 BAR0 (the moving BAR) at discovery
        .set F_C_IO, FOUND + 0x18               # 1234:0003 BAR1 (doorbell)
        .set F_ROM, FOUND + 0x1c                # where SeaBIOS shadowed this ROM (CS << 4)
        .set F_C_BDF, FOUND + 0x20              # config address of 1234:0003 (0x80000000 | bdf << 8)
        .set F_CPUS, FOUND + 0x24               # vCPUs (CMOS 0x5f + 1)
        .set ITER, 0x9800
        .set MOVED, 0x9840
        .set CPUS_UP, 0x9880
        .set CFG_LOCK, 0x9884
        .set ERRORS, 0x9888
        .set BLOCK, 0x60000000

        .code16
_start:
rom:
        .byte 0x55, 0xaa, ROM_BLOCKS
        jmp     init                            # offset 3: initialisation entry
        .fill 0x18 - (. - rom), 1, 0
        .word   pcir - rom                      # 0x18: PCI data structure
        .word   pnp - rom                       # 0x1a: PnP expansion header
        .p2align 4
pcir:
        .ascii  "PCIR"
        .word   0x1234, 0x0003                  # vendor, device (must match the function)
        .word   0                               # vital product data
        .word   0x18                            # length of this structure
        .byte   0                               # revision
        .byte   0x00, 0x80, 0xff                # class code: 0xff0000 (unassigned), prog-if 0
        .word   ROM_BLOCKS                      # image length (512-byte blocks)
        .word   1                               # revision level of code
        .byte   0                               # code type: x86 PC-AT
        .byte   0x80                            # last image
        .word   0
        .p2align 4
pnp:
        .ascii  "$PnP"
        .byte   1                               # revision
        .byte   2                               # length in 16-byte units
        .word   0                               # next header
        .byte   0                               # reserved
pnp_sum:
        .byte   0                               # checksum (written by build-optionrom.sh)
        .long   0                               # device identifier
        .word   manufacturer - rom
        .word   product - rom
        .byte   0x02, 0x00, 0x00                # device type: mass storage, other
        .byte   0x14                            # indicators: IPL device, not display
        .word   0                               # BCV
        .word   0                               # disconnect vector
        .word   bev - rom                       # bootstrap entry vector
        .word   0                               # reserved
        .word   0                               # static resource information vector
manufacturer:
        .asciz  "physmap"
product:
        .asciz  "physmap test guest"

# Initialisation entry: AX = bus/device/function. Ring the doorbell (I/O BAR, offset 0) with 1.
init:
        pushad
        movzx   eax, ax
        shl     eax, 8
        or      eax, 0x80000014                 # BAR1
        mov     dx, 0xcf8
        out     dx, eax
        mov     dx, 0xcfc
        in      eax, dx
        and     ax, 0xfffc
        mov     dx, ax
        mov     eax, 1
        out     dx, eax
        popad
        retf

# Boot entry vector: copy the payload to 0x10000, enter 32-bit protected mode there.
bev:
        cli
        cld
        mov     ax, cs
        mov     ds, ax
        movzx   ebp, ax
        shl     ebp, 4                          # where the shadow copy is
        xor     ax, ax
        mov     ss, ax
        mov     sp, 0x7000
        mov     ax, PAYLOAD >> 4
        mov     es, ax
        mov     si, offset payload
        xor     di, di
        mov     cx, payload_end - payload
        rep movsb
        mov     ds, ax
        lgdt    [gdt_desc - payload]
        mov     eax, cr0
        or      al, 1
        mov     cr0, eax
        .byte   0x66, 0xea                      # ljmpl 0x08:bsp32
        .long   bsp32 - payload + PAYLOAD
        .word   0x08

# ---------------------------------------------------------------- the payload, at 0x10000
        .p2align 4
payload:
# Application processors enter here in real mode (SIPI vector 0x10: CS = 0x1000, IP = 0).
ap16:
        cli
        cld
        mov     ax, cs
        mov     ds, ax
        lgdt    [gdt_desc - payload]
        mov     eax, cr0
        or      al, 1
        mov     cr0, eax
        .byte   0x66, 0xea                      # ljmpl 0x08:ap32
        .long   ap32 - payload + PAYLOAD
        .word   0x08

        .p2align 3
gdt:
        .quad   0
        .quad   0x00cf9a000000ffff              # 0x08: code, flat 4 GiB, 32-bit
        .quad   0x00cf92000000ffff              # 0x10: data, flat 4 GiB
gdt_desc:
        .word   gdt_desc - gdt - 1
        .long   gdt - payload + PAYLOAD

        .code32
ap32:
        mov     ax, 0x10
        mov     ds, ax
        mov     es, ax
        mov     ss, ax
        mov     esi, [0xfee00020]               # local APIC ID register
        shr     esi, 24
        mov     esp, esi
        shl     esp, 12
        neg     esp
        add     esp, 0x80000
        lock inc dword ptr [CPUS_UP]
        jmp     checks

bsp32:
        mov     ax, 0x10
        mov     ds, ax
        mov     es, ax
        mov     ss, ax
        mov     esp, 0x80000
        mov     [F_ROM], ebp
        xor     esi, esi
        mov     dword ptr [CPUS_UP], 0
        mov     dword ptr [CFG_LOCK], 0
        mov     dword ptr [ERRORS], 0
        mov     edi, ITER                       # iterations and retries of 16 vCPUs
        mov     ecx, 0x20
        xor     eax, eax
        rep stosd
        mov     dword ptr [F_C_IO], 0
        # Find the devices on bus 0 (function 0 of each slot).
        mov     ecx, 0x80000000
find:
        mov     eax, ecx
        call    cfg_read
        cmp     eax, 0x00011234
        jne     1f
        lea     eax, [ecx + 0x10]
        call    bar32
        mov     [F_A_MMIO], eax
        lea     eax, [ecx + 0x14]
        call    cfg_read
        and     eax, 0xfffc
        mov     [F_A_IO], eax
        lea     eax, [ecx + 0x18]
        call    bar64
        mov     [F_A_MMIO64], eax
        jmp     2f
1:      cmp     eax, 0x00021234
        jne     1f
        lea     eax, [ecx + 0x10]
        call    bar64
        mov     [F_B_PREF64], eax
        lea     eax, [ecx + 0x20]
        call    cfg_read
        and     eax, 0xfffc
        mov     [F_B_IO], eax
        jmp     2f
1:      cmp     eax, 0x00031234
        jne     3f
        mov     [F_C_BDF], ecx
        lea     eax, [ecx + 0x10]
        call    bar32
        mov     [F_C_MMIO], eax
        lea     eax, [ecx + 0x14]
        call    cfg_read
        and     eax, 0xfffc
        mov     [F_C_IO], eax
        lea     eax, [ecx + 0x30]               # the ROM BAR: the firmware must have closed it
        call    cfg_read
        test    al, 1
        jz      2f
        mov     eax, 11
        call    report
2:      lea     eax, [ecx + 0x04]               # the firmware enabled I/O and memory decoding
        call    cfg_read
        and     eax, 3
        cmp     eax, 3
        je      3f
        mov     eax, 12
        call    report
3:      add     ecx, 0x800
        cmp     ecx, 0x80010000
        jb      find
        # Without the doorbell there is no one to tell: stop here.
        cmp     dword ptr [F_C_IO], 0
        jne     1f
        cli
0:      hlt
        jmp     0b
1:      mov     edx, [F_C_IO]                   # stage 2: the BEV ran, the devices are found
        mov     eax, 2
        out     dx, eax
        add     edx, 8
        mov     eax, [F_ROM]
        out     dx, eax
        # Tell the serial port what was found.
        mov     ebx, offset msg_found - payload + PAYLOAD
        call    puts
        mov     edi, FOUND
        mov     ecx, 8
1:      mov     eax, [edi]
        call    puthex
        mov     al, ' '
        call    putc
        add     edi, 4
        loop    1b
        mov     ebx, offset msg_crlf - payload + PAYLOAD
        call    puts
        # How many vCPUs: CMOS 0x5f holds the count less one (as SeaBIOS reads it).
        mov     al, 0x5f
        out     0x70, al
        in      al, 0x71
        movzx   eax, al
        inc     eax
        mov     [F_CPUS], eax
        cmp     eax, 1
        je      started
        # INIT, then SIPI twice, to all but self (as SeaBIOS's smp_scan does).
        mov     dword ptr [0xfee00300], 0x000c4500
        mov     dword ptr [0xfee00300], 0x000c4600 | (PAYLOAD >> 12)
        mov     dword ptr [0xfee00300], 0x000c4600 | (PAYLOAD >> 12)
        mov     ecx, 0x4000000
1:      mov     eax, [F_CPUS]
        dec     eax
        cmp     [CPUS_UP], eax
        je      started
        pause
        loop    1b
        mov     eax, 13                         # an AP did not start
        call    report
started:
        mov     ebx, offset msg_checks - payload + PAYLOAD
        call    puts
        mov     edx, [F_C_IO]                   # stage 3: every vCPU is about to check
        mov     eax, 3
        out     dx, eax

# Every vCPU: esi = its APIC ID, ebx = iteration.
checks:
        xor     ebx, ebx
next:
        mov     ebp, ebx
        shl     ebp, 2
        and     ebp, 0xffc                      # offset into each 4 KiB register window
        # Register file 0xA1 (32-bit MMIO BAR): read, check, write back (the device checks).
        mov     edi, [F_A_MMIO]
        add     edi, ebp
        mov     edx, [edi]
        mov     eax, ebp
        or      eax, 0xA1000000
        cmp     edx, eax
        jne     err1
        mov     [edi], eax
        # Register file 0xA2 (64-bit MMIO BAR).
        mov     edi, [F_A_MMIO64]
        add     edi, ebp
        mov     edx, [edi]
        mov     eax, ebp
        or      eax, 0xA2000000
        cmp     edx, eax
        jne     err2
        # Register file 0xA3 (64-bit prefetchable BAR).
        mov     edi, [F_B_PREF64]
        add     edi, ebp
        mov     edx, [edi]
        mov     eax, ebp
        or      eax, 0xA3000000
        cmp     edx, eax
        jne     err3
        # Ports 0xC1 and 0xC3 (I/O BARs).
        mov     ecx, ebp
        and     ecx, 0x3c
        mov     edx, [F_A_IO]
        add     edx, ecx
        in      eax, dx
        or      ecx, 0xC1000000
        cmp     eax, ecx
        jne     err4
        mov     ecx, ebp
        and     ecx, 0xfc
        mov     edx, [F_B_IO]
        add     edx, ecx
        in      eax, dx
        or      ecx, 0xC3000000
        cmp     eax, ecx
        jne     err5
        # The moving BAR, where config space says it is now.
        mov     eax, [F_C_BDF]
        add     eax, 0x10
        call    cfg_read
        and     eax, 0xfffffff0
        lea     edi, [eax + ebp]
        mov     edx, [edi]
        cmp     edx, 0xffffffff
        je      moved
        mov     eax, edi
        shr     eax, 20
        and     eax, 0xfff
        shl     eax, 12
        mov     ecx, edi
        and     ecx, 0xfff
        or      eax, ecx
        or      eax, 0xB0000000
        cmp     edx, eax
        jne     err6
        jmp     shadow
moved:
        lock inc dword ptr [MOVED + esi*4]
shadow:
        # The shadowed ROM (read-only or read-write RAM): always "55 AA"; a write may land.
        mov     edi, [F_ROM]
        movzx   eax, word ptr [edi]
        cmp     eax, 0xaa55
        jne     err7
        mov     [edi + 0x800 + esi*4], ebx
        # The F segment (ROM alias, read-only RAM, write-only, read-write: the PAM0 states):
        # its reset vector reads as the flash's at 0xfffffff0 in every state.
        mov     eax, [0xffff0]
        cmp     eax, [0xfffffff0]
        jne     err8
        mov     [0xfe000 + esi*4], ebx
        # The memory block: plugged (RAM, no exit) or unplugged (all ones).
        mov     edx, [BLOCK]
        cmp     edx, 0x47554C50                 # "PLUG"
        je      1f
        cmp     edx, 0xffffffff
        jne     err9
1:      inc     ebx
        mov     [ITER + esi*4], ebx
        jmp     next

err1:   mov     eax, 1
        jmp     fail
err2:   mov     eax, 2
        jmp     fail
err3:   mov     eax, 3
        jmp     fail
err4:   mov     eax, 4
        jmp     fail
err5:   mov     eax, 5
        jmp     fail
err6:   mov     eax, 6
        jmp     fail
err7:   mov     eax, 7
        jmp     fail
err8:   mov     eax, 8
        jmp     fail
err9:   mov     eax, 9
fail:
        call    report
        inc     ebx
        jmp     next

# Doorbell offset 4: error code eax (also counted at ERRORS, in case the doorbell is unknown).
report:
        lock inc dword ptr [ERRORS]
        push    edx
        mov     edx, [F_C_IO]
        add     edx, 4
        out     dx, eax
        pop     edx
        ret

# eax = config address -> eax = the dword there. Holds the config lock (the 0xcf8 latch is
# one for all vCPUs).
cfg_read:
        push    edx
        push    eax
1:      mov     eax, 1
        xchg    [CFG_LOCK], eax
        test    eax, eax
        jz      2f
        pause
        jmp     1b
2:      pop     eax
        mov     dx, 0xcf8
        out     dx, eax
        mov     dx, 0xcfc
        in      eax, dx
        mov     dword ptr [CFG_LOCK], 0
        pop     edx
        ret

# eax = config address of a 32-bit memory BAR -> its base.
bar32:
        call    cfg_read
        and     eax, 0xfffffff0
        ret

# eax = config address of a 64-bit memory BAR -> its base (reported if above 4 GiB).
bar64:
        push    ecx
        mov     ecx, eax
        call    cfg_read
        and     eax, 0xfffffff0
        push    eax
        lea     eax, [ecx + 4]
        call    cfg_read
        test    eax, eax
        jz      1f
        mov     eax, 10                         # beyond this 32-bit guest's reach
        call    report
1:      pop     eax
        pop     ecx
        ret

# Serial port 0x3f8: al -> the port, once the transmitter holding register is empty.
putc:
        push    edx
        push    eax
        mov     dx, 0x3fd
1:      in      al, dx
        test    al, 0x20
        jz      1b
        pop     eax
        mov     dx, 0x3f8
        out     dx, al
        pop     edx
        ret

# ebx = NUL-terminated string.
puts:
        push    eax
1:      mov     al, [ebx]
        test    al, al
        jz      2f
        call    putc
        inc     ebx
        jmp     1b
2:      pop     eax
        ret

# eax -> eight hex digits.
puthex:
        push    ecx
        push    edx
        mov     edx, eax
        mov     ecx, 8
1:      rol     edx, 4
        mov     eax, edx
        and     eax, 0xf
        add     al, '0'
        cmp     al, '9'
        jbe     2f
        add     al, 'a' - '0' - 10
2:      call    putc
        loop    1b
        pop     edx
        pop     ecx
        ret

msg_found:
        .asciz  "physmap option ROM: found "
msg_crlf:
        .asciz  "\r\n"
msg_checks:
        .asciz  "physmap option ROM: every vCPU checks its devices\r\n"
payload_end:

        .fill   ROM_BLOCKS * 512 - 1 - (. - rom), 1, 0
rom_sum:
        .byte   0                               # checksum (written by build-optionrom.sh)
