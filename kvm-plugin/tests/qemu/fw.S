/*
 * A firmware payload for `qemu-system-x86_64 -bios fw.bin` (64 KiB, our
 * own: no SeaBIOS, no download). Real mode from the reset vector: it sets
 * up the PIC and the PIT (IRQ0, ~18.2 Hz), then for each of NBLOCKS
 * blocks mixes ROUNDS rounds into a 32-bit checksum, mixes in the serial
 * port's line status (an IN answered by QEMU), prints
 * "block NN csum XXXXXXXX" on COM1 and waits two timer ticks with
 * sti; hlt. At the end it prints "done csum XXXXXXXX" and resets the
 * machine through the keyboard controller, which ends QEMU under
 * -no-reboot.
 *
 * Build: as --32 -o fw.o fw.S && ld -m elf_i386 -Ttext 0 --oformat binary -o fw.bin fw.o
 */
        .code16
        .text
        .set NBLOCKS, 60
        .set ROUNDS, 1500
        .set COM1, 0x3f8
        .set TICKS, 0x500               /* word: timer ticks */
        .set CSUM, 0x504                /* dword: checksum */

        .globl _start
_start:
main:
        cli
        xorw %ax, %ax
        movw %ax, %ds
        movw %ax, %es
        movw %ax, %ss
        movw $0x7000, %sp
        movw $0, TICKS
        movl $0x12345678, CSUM
        /* The local APIC off (hardware-disabled in IA32_APIC_BASE): the
         * PIC's interrupts then go straight to the CPU (a BIOS sets LINT0
         * to ExtINT instead; QEMU resets it masked). */
        movl $0x1b, %ecx
        rdmsr
        andl $~0x800, %eax
        wrmsr
        /* IRQ0 -> vector 8 (as a BIOS sets the PIC): IVT entry 8 */
        movw $isr, 0x20
        movw $0xf000, 0x22
        /* PIC: ICW1..4, vector bases 0x08 / 0x70, only IRQ0 unmasked */
        movb $0x11, %al
        outb %al, $0x20
        outb %al, $0xa0
        movb $0x08, %al
        outb %al, $0x21
        movb $0x70, %al
        outb %al, $0xa1
        movb $0x04, %al
        outb %al, $0x21
        movb $0x02, %al
        outb %al, $0xa1
        movb $0x01, %al
        outb %al, $0x21
        outb %al, $0xa1
        movb $0xfe, %al
        outb %al, $0x21
        movb $0xff, %al
        outb %al, $0xa1
        /* PIT channel 0, mode 2, divisor 65536 */
        movb $0x34, %al
        outb %al, $0x43
        xorb %al, %al
        outb %al, $0x40
        outb %al, $0x40

        movw $hello, %si
        call puts
        xorw %bx, %bx                   /* block number */
block:
        movl CSUM, %eax
        movl $ROUNDS, %ecx
1:      imull $1103515245, %eax, %eax
        addl %ecx, %eax
        roll $5, %eax
        decl %ecx
        jnz 1b
        movl %eax, CSUM
        movw $COM1+5, %dx               /* line status: an IN QEMU answers */
        inb %dx, %al
        movzbl %al, %eax
        xorl %eax, CSUM
        movw $msg_block, %si
        call puts
        movw %bx, %ax
        call put2
        movw $msg_csum, %si
        call puts
        movl CSUM, %eax
        call put8
        movw $crlf, %si
        call puts
        /* two ticks */
        movw TICKS, %ax
        addw $2, %ax
2:      sti
        hlt
        cli
        cmpw %ax, TICKS
        jb 2b
        incw %bx
        cmpw $NBLOCKS, %bx
        jb block

        movw $msg_done, %si
        call puts
        movl CSUM, %eax
        call put8
        movw $crlf, %si
        call puts
        movb $0xfe, %al                 /* reset: QEMU -no-reboot exits */
        outb %al, $0x64
3:      cli
        hlt
        jmp 3b

isr:
        pushw %ax
        pushw %ds
        xorw %ax, %ax
        movw %ax, %ds
        incw TICKS
        movb $0x20, %al
        outb %al, $0x20
        popw %ds
        popw %ax
        iret

/* Print the NUL-terminated string at %cs:%si. */
puts:
        pushw %ax
        pushw %dx
1:      movb %cs:(%si), %al
        testb %al, %al
        jz 2f
        call putc
        incw %si
        jmp 1b
2:      popw %dx
        popw %ax
        ret

/* Print %al on COM1 once the transmitter is empty. */
putc:
        pushw %ax
        pushw %dx
        movb %al, %ah
        movw $COM1+5, %dx
1:      inb %dx, %al
        testb $0x20, %al
        jz 1b
        movb %ah, %al
        movw $COM1, %dx
        outb %al, %dx
        popw %dx
        popw %ax
        ret

/* Print %eax as 8 hex digits. */
put8:
        pushl %eax
        shrl $16, %eax
        call put4
        popl %eax
put4:
        pushw %ax
        movb %ah, %al
        call hex2
        popw %ax
        /* fall through for the low byte */
hex2:
        pushw %ax
        shrb $4, %al
        call hex1
        popw %ax
hex1:
        pushw %ax
        andb $0x0f, %al
        addb $'0', %al
        cmpb $'9', %al
        jbe 1f
        addb $7, %al
1:      call putc
        popw %ax
        ret

/* Print %ax (< 100) as two decimal digits. */
put2:
        pushw %ax
        pushw %bx
        movb $10, %bl
        divb %bl
        addb $'0', %al
        call putc
        movb %ah, %al
        addb $'0', %al
        call putc
        popw %bx
        popw %ax
        ret

hello:     .asciz "fw: start\r\n"
msg_block: .asciz "block "
msg_csum:  .asciz " csum "
msg_done:  .asciz "done csum "
crlf:      .asciz "\r\n"

        .org 0xfff0
reset:
        ljmp $0xf000, $main
        .org 0x10000
